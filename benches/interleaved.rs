//! Ratios that survive a noisy machine: each round times N raw operations
//! and N fleetwire operations back to back (alternating which goes first),
//! and the report is the median of the per-round ratios.
//!
//!     cargo bench --all-features --bench interleaved
//!     cargo bench --all-features --bench interleaved -- consume/runner publish/redis/concurrent
//!
//! Arguments that are not flags select groups by name prefix (any of them).
//! `FLEETWIRE_BENCH_ROUNDS=101` runs more rounds per comparison (default 31).
//! Each row prints the IQR of its per-round ratios and the 1-minute load
//! average: the machine these run on is shared.
//! With the `redis-cluster` feature, the `cluster/` groups start a private
//! 6-node Redis Cluster and compare against raw redis-rs `cluster_async`.

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use common::{envelope, raw_xadd};

use fleetwire::consumer::{Handler, HandlerResult, Runner};
use fleetwire::{Delivery, MessageId};
use futures_util::{stream::FuturesUnordered, FutureExt, StreamExt};
use redis::aio::MultiplexedConnection;
use tokio::sync::oneshot;

use fleetwire::{
    memory::MemoryBus, redis::RedisBackend, Codec, ConsumerName, Envelope, EventBus, GroupName, Instance,
    InstanceId, LivenessStore, ReadOptions, RegistryStore, ServiceName, StartFrom, Status, StreamName,
};
use futures_util::future::join_all;
use std::{
    collections::BTreeMap,
    future::Future,
    panic::AssertUnwindSafe,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

/// Interleaved rounds per comparison: 31, or `FLEETWIRE_BENCH_ROUNDS` (odd
/// numbers keep the median one round's ratio).
fn rounds() -> usize {
    static ROUNDS: OnceLock<usize> = OnceLock::new();
    *ROUNDS.get_or_init(|| {
        std::env::var("FLEETWIRE_BENCH_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .filter(|r| *r >= 3)
            .unwrap_or(31)
    })
}

/// The group-name prefixes given on the command line; empty runs every group.
static FILTER: OnceLock<Vec<String>> = OnceLock::new();

/// Whether the group (or section) `name` runs: no filter, or it shares a prefix with one.
fn wants(name: &str) -> bool {
    let filters = FILTER.get().map(Vec::as_slice).unwrap_or_default();
    filters.is_empty()
        || filters
            .iter()
            .any(|f| name.starts_with(f.as_str()) || f.starts_with(name))
}

async fn time<F: Future<Output = ()>>(n: usize, mut op: impl FnMut() -> F) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        op().await;
    }
    start.elapsed()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median ratio fleetwire/raw of the time for `n` operations, and the median per-op times.
async fn compare<R, RF, W, WF>(name: &str, target: &str, n: usize, mut raw: R, mut fw: W)
where
    R: FnMut() -> RF,
    RF: Future<Output = ()>,
    W: FnMut() -> WF,
    WF: Future<Output = ()>,
{
    // Warm up both paths.
    time(n, &mut raw).await;
    time(n, &mut fw).await;
    let (mut ratios, mut raws, mut fws) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds() {
        let (r, f) = if round % 2 == 0 {
            let r = time(n, &mut raw).await;
            (r, time(n, &mut fw).await)
        } else {
            let f = time(n, &mut fw).await;
            (time(n, &mut raw).await, f)
        };
        ratios.push(f.as_secs_f64() / r.as_secs_f64());
        raws.push(r.as_secs_f64() / n as f64);
        fws.push(f.as_secs_f64() / n as f64);
    }
    let per = |s: f64| {
        if s >= 1e-3 {
            format!("{:.2} ms", s * 1e3)
        } else if s >= 1e-6 {
            format!("{:.1} µs", s * 1e6)
        } else {
            format!("{:.0} ns", s * 1e9)
        }
    };
    ratios.sort_by(|a, b| a.total_cmp(b));
    let (q1, q3) = (ratios[ratios.len() / 4], ratios[3 * ratios.len() / 4]);
    println!(
        "| {name} | {} | {} | {:.2}× (IQR {q1:.2}–{q3:.2}) | {target} | load {} |",
        per(median(raws)),
        per(median(fws)),
        median(ratios),
        load_average()
    );
}

/// The 1-minute load average (`/proc/loadavg`), printed with every figure:
/// the machine is shared.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// Entries each drain round pre-fills (untimed) and then times draining.
const DRAIN_N: usize = 5_000;

/// Fires once `left` handlings have been counted.
#[derive(Default)]
struct Countdown {
    left: AtomicUsize,
    done: Mutex<Option<oneshot::Sender<()>>>,
}

impl Countdown {
    fn arm(&self, n: usize) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        *self.done.lock().unwrap() = Some(tx);
        self.left.store(n, Ordering::SeqCst);
        rx
    }

    fn tick(&self) {
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(tx) = self.done.lock().unwrap().take() {
                let _ = tx.send(());
            }
        }
    }
}

/// Draining a pre-filled stream three ways: the `Runner` (concurrency 64,
/// no-op handler, stopped once all were handled), a raw redis-rs loop that
/// pipelines the `XACK` of batch N with the `XREADGROUP COUNT 64` of batch
/// N+1, and a naive raw loop (`XREADGROUP`, then a separate `XACK`).
struct Drain {
    bus: Arc<dyn EventBus>,
    raw: MultiplexedConnection,
    body: Vec<u8>,
    runner: Runner,
    /// Concurrency 128: two reads of 64 in flight, each the raw loops' read size.
    runner_wide: Runner,
    countdown: Arc<Countdown>,
    /// What the last round's drain cost this process.
    drain_usage: Mutex<ProcessUsage>,
}

/// The three compared sides' streams, then the bus-level loop used for attribution.
const SIDES: [&str; 5] = ["d:runner", "d:pipelined", "d:naive", "d:bus", "d:runner-wide"];

impl Drain {
    async fn new(backend: &RedisBackend, raw: MultiplexedConnection, body: Vec<u8>) -> Self {
        let bus: Arc<dyn EventBus> = Arc::new(backend.bus());
        let group = GroupName::new("g").unwrap();
        for s in SIDES {
            bus.ensure_group(&StreamName::new(s).unwrap(), &group, StartFrom::Latest)
                .await
                .unwrap();
        }
        let countdown = Arc::new(Countdown::default());
        let runner = |stream: &str, concurrency: usize| {
            let c = countdown.clone();
            Runner::builder(
                bus.clone(),
                StreamName::new(stream).unwrap(),
                group.clone(),
                ConsumerName::new("runner").unwrap(),
            )
            .concurrency(concurrency)
            .handler(move |_: Delivery| {
                c.tick();
                async { HandlerResult::Ok(()) }
            })
            .build()
            .unwrap()
        };
        let (runner, runner_wide) = (runner(SIDES[0], 64), runner(SIDES[4], 128));
        Self {
            bus,
            raw,
            body,
            runner,
            runner_wide,
            countdown,
            drain_usage: Mutex::new(ProcessUsage::default()),
        }
    }

    async fn fill(&self, stream: &str, n: usize) {
        let mut p = redis::pipe();
        for _ in 0..n {
            p.add_command(raw_xadd(stream, &self.body)).ignore();
        }
        p.query_async::<()>(&mut self.raw.clone()).await.unwrap();
    }

    /// Fill `n` entries (untimed), then time draining them on side `side`.
    async fn round(self: &Arc<Self>, side: usize, n: usize) -> Duration {
        self.round_reading(side, n, 64).await
    }

    /// As `round`, the raw loops reading `count` at a time.
    async fn round_reading(self: &Arc<Self>, side: usize, n: usize, count: usize) -> Duration {
        self.fill(SIDES[side], n).await;
        let usage = ProcessUsage::now();
        // On a worker, as a service's consumer loop runs (not on the `block_on` thread).
        let me = self.clone();
        let took = tokio::spawn(async move {
            match side {
                0 => me.by_runner(&me.runner, n).await,
                4 => me.by_runner(&me.runner_wide, n).await,
                1 => me.by_pipelined_loop(n, count).await,
                2 => me.by_naive_loop(n).await,
                _ => me.by_bus_loop(n, count).await,
            }
        })
        .await
        .unwrap();
        *self.drain_usage.lock().unwrap() = ProcessUsage::now().since(&usage);
        let pending: redis::Value = redis::cmd("XPENDING")
            .arg(SIDES[side])
            .arg("g")
            .query_async(&mut self.raw.clone())
            .await
            .unwrap();
        assert!(
            matches!(&pending, redis::Value::Array(v) if v.first() == Some(&redis::Value::Int(0))),
            "{} left entries pending: {pending:?}",
            SIDES[side]
        );
        took
    }

    async fn by_runner(&self, runner: &Runner, n: usize) -> Duration {
        let all_handled = self.countdown.arm(n);
        let start = Instant::now();
        runner
            .run(async move {
                let _ = all_handled.await;
            })
            .await
            .unwrap();
        start.elapsed()
    }

    async fn by_pipelined_loop(&self, n: usize, count: usize) -> Duration {
        let (stream, mut c) = (SIDES[1], self.raw.clone());
        let start = Instant::now();
        let (mut handled, mut acks) = (0, Vec::<String>::new());
        loop {
            let mut p = redis::pipe();
            if !acks.is_empty() {
                p.cmd("XACK").arg(stream).arg("g").arg(&acks).ignore();
            }
            if handled >= n {
                p.query_async::<()>(&mut c).await.unwrap();
                return start.elapsed();
            }
            p.cmd("XREADGROUP")
                .arg("GROUP")
                .arg("g")
                .arg("raw")
                .arg("COUNT")
                .arg(count)
                .arg("STREAMS")
                .arg(stream)
                .arg(">");
            let replies: Vec<redis::Value> = p.query_async(&mut c).await.unwrap();
            let got = fleetwire::redis::parse::read_reply(&replies[0]).unwrap();
            assert!(!got.is_empty(), "the pipelined loop ran dry at {handled} of {n}");
            handled += got.len();
            acks = got
                .iter()
                .map(|d| std::hint::black_box(d).id.to_string())
                .collect();
        }
    }

    /// The pipelined loop through the bus (`ack_and_read`, blocking read
    /// connection, cancel guard, `Delivery` parsing), without the runner.
    async fn by_bus_loop(&self, n: usize, count: usize) -> Duration {
        let stream = StreamName::new(SIDES[3]).unwrap();
        let (group, me) = (GroupName::new("g").unwrap(), ConsumerName::new("bus").unwrap());
        let options = ReadOptions::count(count).block(Duration::from_millis(250));
        let start = Instant::now();
        let (mut handled, mut acks) = (0, Vec::new());
        while handled < n {
            let got = self
                .bus
                .ack_and_read(&stream, &group, &me, &acks, options)
                .await
                .unwrap();
            assert!(!got.is_empty(), "the bus loop ran dry at {handled} of {n}");
            handled += got.len();
            acks = got.iter().map(|d| std::hint::black_box(d).id).collect();
        }
        self.bus.ack(&stream, &group, &acks).await.unwrap();
        start.elapsed()
    }

    async fn by_naive_loop(&self, n: usize) -> Duration {
        let (stream, mut c) = (SIDES[2], self.raw.clone());
        let start = Instant::now();
        let mut handled = 0;
        while handled < n {
            let v: redis::Value = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg("g")
                .arg("raw")
                .arg("COUNT")
                .arg(64)
                .arg("STREAMS")
                .arg(stream)
                .arg(">")
                .query_async(&mut c)
                .await
                .unwrap();
            let got = fleetwire::redis::parse::read_reply(&v).unwrap();
            assert!(!got.is_empty(), "the naive loop ran dry at {handled} of {n}");
            handled += got.len();
            let ids: Vec<String> = got
                .iter()
                .map(|d| std::hint::black_box(d).id.to_string())
                .collect();
            redis::cmd("XACK")
                .arg(stream)
                .arg("g")
                .arg(&ids)
                .query_async::<u64>(&mut c)
                .await
                .unwrap();
        }
        start.elapsed()
    }

    async fn run(self: &Arc<Self>, server: &support::RedisServer) {
        let n = DRAIN_N;
        for side in [0, 1, 2, 4] {
            self.round(side, n).await;
        }
        let mut times = [Vec::new(), Vec::new(), Vec::new()];
        let mut wide = Vec::new();
        // The runner's XREADGROUPs per round (counted outside the timed part).
        let mut runner_reads = Vec::new();
        for round in 0..rounds() {
            for k in 0..4 {
                let side = [0, 1, 2, 4][(round + k) % 4];
                let before = (side == 0).then(|| server.calls("xreadgroup"));
                let took = self.round(side, n).await.as_secs_f64();
                match side {
                    4 => wide.push(took),
                    _ => times[side].push(took),
                }
                if let Some(before) = before {
                    runner_reads.push(server.calls("xreadgroup") - before);
                }
            }
        }
        let per_msg = |t: &[f64]| median(t.to_vec()) / n as f64 * 1e6;
        for (runner, concurrency, side, target, goal) in [
            (&times[0], 64, 1, "pipelined", 1.0),
            (&times[0], 64, 2, "naive", 1.3),
            (&wide, 128, 1, "pipelined", 1.0),
            (&wide, 128, 2, "naive", 1.3),
        ] {
            let mut ratios: Vec<f64> = runner.iter().zip(&times[side]).map(|(f, r)| f / r).collect();
            ratios.sort_by(|a, b| a.total_cmp(b));
            let k = ratios.len();
            let (q1, med, q3) = (ratios[k / 4], ratios[k / 2], ratios[3 * k / 4]);
            println!(
                "| consume/runner vs {target} raw loop (drain {n}, runner concurrency {concurrency}, no-op handler) | {:.2} µs/msg | {:.2} µs/msg | {med:.2}× (IQR {q1:.2}–{q3:.2}) → throughput {:.2}× | throughput ≥ {goal}×, i.e. ≤ {:.2}× | load {} |",
                per_msg(&times[side]),
                per_msg(runner),
                1.0 / med,
                1.0 / goal,
                load_average(),
            );
        }
        self.by_read_size(n, &times, &runner_reads);
        // A few more rounds per side, counting what each sent (INFO commandstats, first
        // of them) and what its drain cost this process: CPU time and context switches
        // of all its threads.
        let mut runner_batch = 64.0;
        for (side, what) in SIDES.iter().enumerate().take(3) {
            let (mut took, mut cpu, mut switches) = (Vec::new(), Vec::new(), Vec::new());
            let mut first: Option<BTreeMap<String, u64>> = None;
            for _ in 0..5 {
                let before = server.command_calls();
                took.push(self.round(side, n).await.as_secs_f64());
                let used = std::mem::take(&mut *self.drain_usage.lock().unwrap());
                cpu.push(used.cpu_ns as f64);
                switches.push(used.switches as f64);
                let after = server.command_calls();
                first.get_or_insert_with(|| {
                    after
                        .iter()
                        .filter_map(|(cmd, calls)| {
                            // Leave out the round's own fill (n XADD), its check (one
                            // XPENDING) and the first INFO.
                            let own = match cmd.as_str() {
                                "xadd" => n as u64,
                                "xpending" | "info" => 1,
                                _ => 0,
                            };
                            let d = calls - before.get(cmd).copied().unwrap_or(0) - own;
                            (d > 0).then(|| (cmd.clone(), d))
                        })
                        .collect()
                });
            }
            let sent = first.unwrap_or_default();
            let reads = sent.get("xreadgroup").copied().unwrap_or(0).max(1);
            if side == 0 {
                runner_batch = n as f64 / reads as f64;
            }
            println!(
                "  {what} (medians of 5 drains): {:.2} ms for {n}, this process's CPU {:.2} ms, \
                 {:.0} context switches; commands (first round) {sent:?}; {:.1} entries per XREADGROUP",
                median(took) * 1e3,
                median(cpu) / 1e6,
                median(switches),
                n as f64 / reads as f64
            );
        }
        self.attribute(n, runner_batch).await;
    }

    /// The runner's read sizes over the timed rounds, and its time ratio to
    /// the pipelined loop in the rounds whose reads were nearly full and in the others.
    fn by_read_size(&self, n: usize, times: &[Vec<f64>; 3], reads: &[u64]) {
        let per_read: Vec<f64> = reads.iter().map(|r| n as f64 / (*r).max(1) as f64).collect();
        let mut sorted = per_read.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let (mut full, mut partial) = (Vec::new(), Vec::new());
        for (i, size) in per_read.iter().enumerate() {
            let ratio = times[0][i] / times[1][i];
            if *size >= 56.0 {
                full.push(ratio)
            } else {
                partial.push(ratio)
            }
        }
        let show = |v: &Vec<f64>| match v.len() {
            0 => "—".to_owned(),
            k => format!("{:.2}× ({k} rounds)", median(v.clone())),
        };
        println!(
            "  runner entries per XREADGROUP over the {} timed rounds: median {:.1} (min {:.1}, max {:.1}); \
             runner/pipelined time in rounds reading ≥ 56 per read {}, below {}",
            per_read.len(),
            median(per_read.clone()),
            sorted[0],
            sorted[sorted.len() - 1],
            show(&full),
            show(&partial),
        );
    }

    /// Where the runner's time goes: smaller reads, spawning a task per
    /// entry, and the fixed cost of one `run` (group check, recovery, final
    /// ack, leaving the group).
    async fn attribute(self: &Arc<Self>, n: usize, runner_batch: f64) {
        const R: usize = 15;
        let count = runner_batch.round().max(1.0) as usize;
        let (mut full, mut small, mut spawned, mut bus) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut runner_one, mut raw_one) = (Vec::new(), Vec::new());
        for _ in 0..R {
            full.push(self.round_reading(1, n, 64).await.as_secs_f64());
            small.push(self.round_reading(1, n, count).await.as_secs_f64());
            let spawning = tokio::spawn(spawn_and_join(n, 64));
            spawned.push(spawning.await.unwrap().as_secs_f64());
            bus.push(self.round_reading(3, n, 64).await.as_secs_f64());
            runner_one.push(self.round(0, 64).await.as_secs_f64());
            raw_one.push(self.round(1, 64).await.as_secs_f64());
        }
        let us = |v: Vec<f64>| median(v) * 1e6;
        println!(
            "  attribution (medians of {R}): pipelined loop {:.0} µs with COUNT 64, {:.0} µs with COUNT {count} (the runner's mean read); \
             the same loop through the bus's ack_and_read {:.0} µs; \
             spawning and joining {n} no-op handler tasks 64 at a time {:.0} µs; draining one batch of 64: runner {:.0} µs, pipelined loop {:.0} µs",
            us(full),
            us(small),
            us(bus),
            us(spawned),
            us(runner_one),
            us(raw_one),
        );
    }
}

/// CPU time and context switches of every thread of this process, from
/// `/proc/self/task` (zero where that is not readable).
#[derive(Default)]
struct ProcessUsage {
    cpu_ns: u64,
    switches: u64,
}

impl ProcessUsage {
    fn now() -> Self {
        let mut usage = Self {
            cpu_ns: 0,
            switches: 0,
        };
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return usage;
        };
        for task in tasks.flatten() {
            let path = task.path();
            let schedstat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
            usage.cpu_ns += schedstat
                .split_whitespace()
                .next()
                .and_then(|t| t.parse::<u64>().ok())
                .unwrap_or(0);
            let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
            usage.switches += status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
        usage
    }

    fn since(&self, earlier: &Self) -> Self {
        Self {
            cpu_ns: self.cpu_ns.saturating_sub(earlier.cpu_ns),
            switches: self.switches.saturating_sub(earlier.switches),
        }
    }
}

/// What the runner does per entry besides the store: a task per handler
/// call (timeout and panic guard around the boxed future), joined in a set.
async fn spawn_and_join(n: usize, batch: usize) -> Duration {
    let handler: Arc<dyn Handler> = Arc::new(|_: Delivery| async { HandlerResult::Ok(()) });
    let start = Instant::now();
    let mut left = n;
    while left > 0 {
        let take = left.min(batch);
        let mut set = FuturesUnordered::new();
        for _ in 0..take {
            let (h, d) = (
                handler.clone(),
                Delivery::new(MessageId::ZERO, 1, Default::default()),
            );
            set.push(tokio::spawn(async move {
                let call = AssertUnwindSafe(h.handle(d)).catch_unwind();
                tokio::time::timeout(Duration::from_secs(300), call).await
            }));
        }
        while let Some(done) = set.next().await {
            std::hint::black_box(done.is_ok());
        }
        left -= take;
    }
    start.elapsed()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    FILTER
        .set(std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect())
        .expect("set once");
    let server = support::RedisServer::start().expect("the Redis comparisons need redis-server");
    // Six nodes (3 primaries, 3 replicas) on free ports, only when a `cluster/` group runs.
    #[cfg(feature = "redis-cluster")]
    let cluster = if wants("cluster/") {
        support::cluster::Cluster::start()
    } else {
        None
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!("| group | raw per op | fleetwire per op | fleetwire time / raw time (median of {} interleaved rounds, IQR of the per-round ratios) | target | 1-min load |", rounds());
        println!("|---|---|---|---|---|---|");
        let env = envelope();
        let codec = Codec::default();

        if wants("publish/memory") {
            let bus = MemoryBus::builder().max_len(1000).build();
            let s = StreamName::new("mem").unwrap();
            compare("publish/memory vs encode into a pre-sized buffer", "≤ 2.0×", 20_000,
                || async { std::hint::black_box(codec.encode(&env).unwrap()); },
                || async { bus.publish(&s, &env).await.unwrap(); }).await;
            compare("publish/memory vs rmp_serde::to_vec_named", "≤ 2.0×", 20_000,
                || async { std::hint::black_box(rmp_serde::to_vec_named(&env).unwrap()); },
                || async { bus.publish(&s, &env).await.unwrap(); }).await;
        }

        let url = server.url();
        let backend = RedisBackend::builder().url(&url).max_len(10_000).build().unwrap();
        let raw = redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
        let rbus = backend.bus();
        let body = codec.encode(&env).unwrap();
        let fw_s = StreamName::new("bench:fw").unwrap();

        if wants("publish/redis/sequential") {
            compare("publish/redis/sequential", "ops/s ≥ 0.9× raw, i.e. ≤ 1.11×", 200,
                || { let (mut c, cmd) = (raw.clone(), raw_xadd("bench:raw", &body)); async move { cmd.query_async::<String>(&mut c).await.unwrap(); } },
                || async { rbus.publish(&fw_s, &env).await.unwrap(); }).await;
        }
        if wants("publish/redis/concurrent") {
            compare("publish/redis/concurrent (50 at once)", "ops/s ≥ 1.0× raw, i.e. ≤ 1.00×", 20,
                || { let raw = raw.clone(); let body = body.clone(); async move {
                    join_all((0..50).map(|_| { let (mut c, cmd) = (raw.clone(), raw_xadd("bench:raw", &body)); async move { cmd.query_async::<String>(&mut c).await.unwrap() } })).await; } },
                || async { join_all((0..50).map(|_| rbus.publish(&fw_s, &env))).await.into_iter().for_each(|r| { r.unwrap(); }); }).await;
            // The same raw XADDs through redis-rs's ConnectionManager, which fleetwire
            // uses for reconnects: separates its cost from fleetwire's own.
            let manager = redis::Client::open(url.as_str()).unwrap().get_connection_manager().await.unwrap();
            compare("  of which redis-rs ConnectionManager vs bare multiplexed (50 at once)", "(attribution)", 20,
                || { let raw = raw.clone(); let body = body.clone(); async move {
                    join_all((0..50).map(|_| { let (mut c, cmd) = (raw.clone(), raw_xadd("bench:raw", &body)); async move { cmd.query_async::<String>(&mut c).await.unwrap() } })).await; } },
                || { let m = manager.clone(); let body = body.clone(); async move {
                    join_all((0..50).map(|_| { let (mut c, cmd) = (m.clone(), raw_xadd("bench:raw", &body)); async move { cmd.query_async::<String>(&mut c).await.unwrap() } })).await; } }).await;
            // The raw side sends a pre-encoded body; a raw redis-rs publisher encodes
            // each envelope too. This row prices that encode alone.
            compare("  of which encoding each envelope (raw XADDs that encode vs pre-encoded, 50 at once)", "(attribution)", 20,
                || { let raw = raw.clone(); let body = body.clone(); async move {
                    join_all((0..50).map(|_| { let (mut c, cmd) = (raw.clone(), raw_xadd("bench:raw", &body)); async move { cmd.query_async::<String>(&mut c).await.unwrap() } })).await; } },
                || { let (raw, codec, env) = (raw.clone(), &codec, &env); async move {
                    join_all((0..50).map(|_| { let mut c = raw.clone(); async move {
                        let cmd = raw_xadd("bench:raw", &codec.encode(env).unwrap());
                        cmd.query_async::<String>(&mut c).await.unwrap() } })).await; } }).await;
            // fleetwire against the like-for-like raw publisher: encodes each envelope
            // and sends it through a ConnectionManager set up as fleetwire's.
            let like = redis::Client::open(url.as_str()).unwrap().get_connection_manager_with_config(
                redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(2)))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(250))).await.unwrap();
            compare("publish/redis/concurrent vs raw that encodes, through a ConnectionManager (50 at once)", "(like for like)", 20,
                || { let (m, codec, env) = (like.clone(), &codec, &env); async move {
                    join_all((0..50).map(|_| { let mut c = m.clone(); async move {
                        let cmd = raw_xadd("bench:raw", &codec.encode(env).unwrap());
                        cmd.query_async::<String>(&mut c).await.unwrap() } })).await; } },
                || async { join_all((0..50).map(|_| rbus.publish(&fw_s, &env))).await.into_iter().for_each(|r| { r.unwrap(); }); }).await;
        }
        // Trim policies: the same raw `XADD MAXLEN ~` against fleetwire under
        // DropOldest (the default, above) and KeepUnacknowledged. The stream
        // has no group, so keep-unacknowledged trims by length: plain XADDs,
        // plus one trimming script per tenth of the cap.
        if wants("publish/trim") {
            let keep = RedisBackend::builder()
                .url(&url)
                .max_len(10_000)
                .trim_policy(fleetwire::TrimPolicy::keep_unacknowledged())
                .build()
                .unwrap()
                .bus();
            let keep_s = StreamName::new("bench:keep").unwrap();
            compare("publish/trim/keep-unacked/sequential", "ops/s ≥ 0.9× raw, i.e. ≤ 1.11×", 200,
                || { let (mut c, cmd) = (raw.clone(), raw_xadd("bench:raw", &body)); async move { cmd.query_async::<String>(&mut c).await.unwrap(); } },
                || async { keep.publish(&keep_s, &env).await.unwrap(); }).await;
            compare("publish/trim/drop-oldest/sequential", "≤ 1.11×", 200,
                || { let (mut c, cmd) = (raw.clone(), raw_xadd("bench:raw", &body)); async move { cmd.query_async::<String>(&mut c).await.unwrap(); } },
                || async { rbus.publish(&fw_s, &env).await.unwrap(); }).await;
            compare("publish/trim/keep-unacked/concurrent (50 at once)", "ops/s ≥ 0.9× raw, i.e. ≤ 1.11×", 20,
                || { let raw = raw.clone(); let body = body.clone(); async move {
                    join_all((0..50).map(|_| { let (mut c, cmd) = (raw.clone(), raw_xadd("bench:raw", &body)); async move { cmd.query_async::<String>(&mut c).await.unwrap() } })).await; } },
                || async { join_all((0..50).map(|_| keep.publish(&keep_s, &env))).await.into_iter().for_each(|r| { r.unwrap(); }); }).await;
            compare("publish/trim/drop-oldest/concurrent (50 at once)", "≤ 1.00× (as publish/redis/concurrent)", 20,
                || { let raw = raw.clone(); let body = body.clone(); async move {
                    join_all((0..50).map(|_| { let (mut c, cmd) = (raw.clone(), raw_xadd("bench:raw", &body)); async move { cmd.query_async::<String>(&mut c).await.unwrap() } })).await; } },
                || async { join_all((0..50).map(|_| rbus.publish(&fw_s, &env))).await.into_iter().for_each(|r| { r.unwrap(); }); }).await;
        }
        if wants("publish/redis/batch64") {
            let batch: Vec<Envelope> = (0..64).map(|_| envelope()).collect();
            compare("publish/redis/batch64", "≤ 1.11×", 20,
                || { let mut c = raw.clone(); let mut p = redis::pipe();
                     for e in &batch { p.add_command(raw_xadd("bench:raw", &codec.encode(e).unwrap())); }
                     async move { p.query_async::<Vec<String>>(&mut c).await.unwrap(); } },
                || async { rbus.publish_batch(&fw_s, &batch).await.unwrap(); }).await;
        }

        // consume: each op fills 64 entries (untimed share is equal on both sides) then reads and acks them.
        if wants("consume/redis") {
            let group = GroupName::new("g").unwrap();
            for s in ["c:raw", "c:fw"] {
                rbus.ensure_group(&StreamName::new(s).unwrap(), &group, StartFrom::Latest).await.unwrap();
            }
            let fill = |stream: &'static str| { let mut p = redis::pipe(); for _ in 0..64 { p.add_command(raw_xadd(stream, &body)).ignore(); } p };
            let (fill_raw, fill_fw) = (fill("c:raw"), fill("c:fw"));
            let c_fw = StreamName::new("c:fw").unwrap();
            let me = ConsumerName::new("c1").unwrap();
            compare("consume/redis (fill 64, read 64, ack 64)", "(no target)", 20,
                || { let mut c = raw.clone(); let fill = fill_raw.clone(); async move {
                    fill.query_async::<()>(&mut c).await.unwrap();
                    let v: redis::Value = redis::cmd("XREADGROUP").arg("GROUP").arg("g").arg("c1").arg("COUNT").arg(64).arg("STREAMS").arg("c:raw").arg(">").query_async(&mut c).await.unwrap();
                    let ids = fleetwire::redis::parse::read_reply(&v).unwrap();
                    let mut ack = redis::cmd("XACK"); ack.arg("c:raw").arg("g");
                    for d in &ids { ack.arg(d.id.to_string()); }
                    assert_eq!(ack.query_async::<u64>(&mut c).await.unwrap(), 64);
                } },
                || { let mut c = raw.clone(); let fill = fill_fw.clone(); let (rbus, c_fw, group, me) = (&rbus, &c_fw, &group, &me); async move {
                    fill.query_async::<()>(&mut c).await.unwrap();
                    let got = rbus.read(c_fw, group, me, ReadOptions::count(64)).await.unwrap();
                    assert_eq!(rbus.ack(c_fw, group, &got.iter().map(|d| d.id).collect::<Vec<_>>()).await.unwrap(), 64);
                } }).await;
        }

        if wants("consume/runner") {
            let drain = Arc::new(Drain::new(&backend, raw.clone(), body.to_vec()).await);
            drain.run(&server).await;
        }

        if wants("liveness/redis") {
            let live = backend.liveness();
            let ids: Vec<InstanceId> = (0..10_000).map(|i| InstanceId::new(format!("rt-{i}")).unwrap()).collect();
            for id in ids.iter().step_by(2) { live.touch(id, Duration::from_secs(600)).await.unwrap(); }
            let keys: Vec<String> = ids.iter().map(|i| format!("sg:liveness:{i}")).collect();
            compare("liveness/redis/is_alive_batch_10k vs MGET", "≤ 1.2×", 3,
                || { let mut c = raw.clone(); let cmd = { let mut m = redis::cmd("MGET"); m.arg(&keys); m }; async move { cmd.query_async::<Vec<Option<String>>>(&mut c).await.unwrap(); } },
                || async { live.is_alive_batch(&ids).await.unwrap(); }).await;
        }

        let reg = backend.registry();
        if wants("registry/redis/heartbeat") {
            let svc = ServiceName::new("bench-svc").unwrap();
            let one = Instance::new(svc.clone(), InstanceId::new("hb-1").unwrap(), Status::Running);
            reg.register(&one, Duration::from_secs(600)).await.unwrap();
            compare("registry/redis/heartbeat vs PEXPIRE", "(no target)", 200,
                || { let mut c = raw.clone(); async move { redis::cmd("PEXPIRE").arg("sg:registry:service:bench-svc:hb-1").arg(600_000).query_async::<bool>(&mut c).await.unwrap(); } },
                || async { assert!(reg.heartbeat(&svc, &one.id, Duration::from_secs(600)).await.unwrap()); }).await;
        }

        if wants("registry/redis/list") {
            let fleet = ServiceName::new("bench-fleet").unwrap();
            let all: Vec<_> = (0..10_000).map(|i| Instance::new(fleet.clone(), InstanceId::new(format!("i-{i}")).unwrap(), Status::Running)).collect();
            for chunk in all.chunks(500) {
                for r in join_all(chunk.iter().map(|i| reg.register(i, Duration::from_secs(600)))).await { r.unwrap(); }
            }
            let keys: Vec<String> = (0..10_000).map(|i| format!("sg:registry:service:bench-fleet:i-{i}")).collect();
            compare("registry/redis/list_10k vs MGET of the known keys", "≤ 2×", 2,
                || { let mut c = raw.clone(); let mut p = redis::pipe(); for ch in keys.chunks(1000) { p.cmd("MGET").arg(ch); }
                     async move { p.query_async::<Vec<Vec<Option<Vec<u8>>>>>(&mut c).await.unwrap(); } },
                || async { assert_eq!(reg.list(Some(&fleet)).await.unwrap().len(), 10_000); }).await;
            // A new handle per list reads the index's ids again, as any handle does after the fleet changed.
            compare("registry/redis/list_10k_cold (ids read again) vs MGET", "≤ 2×", 2,
                || { let mut c = raw.clone(); let mut p = redis::pipe(); for ch in keys.chunks(1000) { p.cmd("MGET").arg(ch); }
                     async move { p.query_async::<Vec<Vec<Option<Vec<u8>>>>>(&mut c).await.unwrap(); } },
                || { let (reg, fleet) = (backend.registry(), &fleet); async move { assert_eq!(reg.list(Some(fleet)).await.unwrap().len(), 10_000); } }).await;
        }

        #[cfg(feature = "redis-cluster")]
        if let Some(cluster) = &cluster {
            cluster_groups(cluster, &codec, &env).await;
        }
    });
}

/// The `cluster/` groups: fleetwire's `redis+cluster://` backend against raw
/// redis-rs `cluster_async` (one `ClusterConnection`, i.e. one multiplexed
/// connection per node), on a private 6-node cluster.
#[cfg(feature = "redis-cluster")]
async fn cluster_groups(cluster: &support::cluster::Cluster, codec: &Codec, env: &Envelope) {
    let url = cluster.url();
    let backend = RedisBackend::builder().url(&url).max_len(10_000).build().unwrap();
    let nodes: Vec<String> = cluster.nodes.iter().map(|n| n.url()).collect();
    let raw = redis::cluster::ClusterClient::new(nodes)
        .unwrap()
        .get_async_connection()
        .await
        .unwrap();
    let bus = backend.bus();
    let body = codec.encode(env).unwrap();
    // One hash tag: both streams live on the same primary.
    let (raw_s, fw_s) = ("{bench}:raw", StreamName::new("{bench}:fw").unwrap());

    if wants("cluster/publish/sequential") {
        compare(
            "cluster/publish/sequential",
            "ops/s ≥ 0.9× raw, i.e. ≤ 1.11×",
            200,
            || {
                let (mut c, cmd) = (raw.clone(), raw_xadd(raw_s, &body));
                async move {
                    cmd.query_async::<String>(&mut c).await.unwrap();
                }
            },
            || async {
                bus.publish(&fw_s, env).await.unwrap();
            },
        )
        .await;
    }
    if wants("cluster/publish/concurrent") {
        compare(
            "cluster/publish/concurrent (50 at once)",
            "ops/s ≥ 0.9× raw, i.e. ≤ 1.11×",
            20,
            || {
                let (raw, body) = (raw.clone(), &body);
                async move {
                    join_all((0..50).map(|_| {
                        let (mut c, cmd) = (raw.clone(), raw_xadd(raw_s, body));
                        async move { cmd.query_async::<String>(&mut c).await.unwrap() }
                    }))
                    .await;
                }
            },
            || async {
                join_all((0..50).map(|_| bus.publish(&fw_s, env)))
                    .await
                    .into_iter()
                    .for_each(|r| {
                        r.unwrap();
                    });
            },
        )
        .await;
    }
    if wants("cluster/liveness/is_alive_batch_10k") {
        let live = backend.liveness();
        // `sg:liveness:rt-{i}`: no hash tag, so the 10,000 keys fall in ~7,000 slots on all 3 primaries.
        let ids: Vec<InstanceId> = (0..10_000)
            .map(|i| InstanceId::new(format!("rt-{i}")).unwrap())
            .collect();
        let half: Vec<&InstanceId> = ids.iter().step_by(2).collect();
        for chunk in half.chunks(500) {
            for r in join_all(chunk.iter().map(|id| live.touch(id, Duration::from_secs(600)))).await {
                r.unwrap();
            }
        }
        let keys: Vec<String> = ids.iter().map(|i| format!("sg:liveness:{i}")).collect();
        let alive = live.is_alive_batch(&ids).await.unwrap();
        assert_eq!(alive.iter().filter(|a| **a).count(), 5_000);
        // Raw: one MGET of all 10,000 keys; redis-rs routes it as one MGET per
        // slot, all in flight at once on each node's multiplexed connection,
        // and reassembles the reply in key order.
        compare(
            "cluster/liveness/is_alive_batch_10k vs MGET (redis-rs splits per slot)",
            "ops/s ≥ 0.9× raw, i.e. ≤ 1.11×",
            3,
            || {
                let mut c = raw.clone();
                let cmd = {
                    let mut m = redis::cmd("MGET");
                    m.arg(&keys);
                    m
                };
                async move {
                    let v = cmd.query_async::<Vec<Option<String>>>(&mut c).await.unwrap();
                    assert_eq!(v.len(), 10_000);
                }
            },
            || async {
                live.is_alive_batch(&ids).await.unwrap();
            },
        )
        .await;
        // Raw, by hand: keys grouped by slot (CRC16), one MGET per slot, one
        // pipeline per primary (from one `CLUSTER SLOTS`, untimed), all three
        // at once, replies put back in key order: what fleetwire does.
        let owners = primaries(&mut raw.clone()).await;
        compare(
            "cluster/liveness/is_alive_batch_10k vs MGET per slot, pipelined per primary",
            "ops/s ≥ 0.9× raw, i.e. ≤ 1.11×",
            3,
            || {
                let (raw, keys, owners) = (raw.clone(), &keys, &owners);
                async move {
                    let mut by_slot: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
                    for (i, k) in keys.iter().enumerate() {
                        by_slot.entry(key_slot(k.as_bytes())).or_default().push(i);
                    }
                    let mut per_node: Vec<(u16, redis::Pipeline, Vec<Vec<usize>>)> = owners
                        .iter()
                        .map(|(first, _)| (*first, redis::pipe(), Vec::new()))
                        .collect();
                    for (slot, at) in by_slot {
                        let node = owners
                            .iter()
                            .position(|(_, r)| r.iter().any(|r| r.contains(&slot)))
                            .unwrap();
                        let mut m = redis::cmd("MGET");
                        for &i in &at {
                            m.arg(&keys[i]);
                        }
                        per_node[node].1.add_command(m);
                        per_node[node].2.push(at);
                    }
                    let mut out: Vec<bool> = vec![false; keys.len()];
                    let replies = join_all(per_node.into_iter().filter(|(_, p, _)| !p.is_empty()).map(
                        |(first, p, at)| {
                            let mut c = raw.clone();
                            async move {
                                let n = p.len();
                                let route = redis::cluster_routing::SingleNodeRoutingInfo::SpecificNode(
                                    redis::cluster_routing::Route::new(
                                        first,
                                        redis::cluster_routing::SlotAddr::Master,
                                    ),
                                );
                                (c.route_pipeline(p, 0, n, route).await.unwrap(), at)
                            }
                        },
                    ))
                    .await;
                    for (values, at) in replies {
                        for (v, at) in values.into_iter().zip(at) {
                            let redis::Value::Array(v) = v else {
                                panic!("MGET reply {v:?}")
                            };
                            for (v, i) in v.into_iter().zip(at) {
                                out[i] = !matches!(v, redis::Value::Nil);
                            }
                        }
                    }
                    assert_eq!(out.iter().filter(|a| **a).count(), 5_000);
                }
            },
            || async {
                live.is_alive_batch(&ids).await.unwrap();
            },
        )
        .await;
    }
}

/// Each primary's first slot and slot ranges, from `CLUSTER SLOTS`.
#[cfg(feature = "redis-cluster")]
async fn primaries(
    c: &mut redis::cluster_async::ClusterConnection,
) -> Vec<(u16, Vec<std::ops::RangeInclusive<u16>>)> {
    let reply: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query_async(c).await.unwrap();
    let mut by_node: BTreeMap<String, Vec<std::ops::RangeInclusive<u16>>> = BTreeMap::new();
    for r in reply {
        let redis::Value::Array(r) = r else {
            panic!("CLUSTER SLOTS entry {r:?}")
        };
        let slot = |v: &redis::Value| match v {
            redis::Value::Int(i) => *i as u16,
            v => panic!("slot {v:?}"),
        };
        let (a, b) = (slot(&r[0]), slot(&r[1]));
        let redis::Value::Array(node) = &r[2] else {
            panic!("node {:?}", r[2])
        };
        by_node.entry(format!("{:?}", node[1])).or_default().push(a..=b);
    }
    by_node.into_values().map(|r| (*r[0].start(), r)).collect()
}

/// Redis Cluster's hash slot of a key without a hash tag: CRC16/XMODEM mod 16384.
#[cfg(feature = "redis-cluster")]
fn key_slot(key: &[u8]) -> u16 {
    // Table-driven, as redis-rs computes it (the keys here have no hash tag).
    crc16::State::<crc16::XMODEM>::calculate(key) % 16384
}
