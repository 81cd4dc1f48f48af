//! Ratios that survive a noisy machine: each round times N raw operations
//! and N fleetwire operations back to back (alternating which goes first),
//! and the report is the median of the per-round ratios.
//!
//!     cargo bench --all-features --bench interleaved

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use common::{envelope, raw_xadd};

use fleetwire::{
    memory::MemoryBus, redis::RedisBackend, Codec, ConsumerName, Envelope, EventBus, GroupName, Instance,
    InstanceId, LivenessStore, ReadOptions, RegistryStore, ServiceName, StartFrom, Status, StreamName,
};
use futures_util::future::join_all;
use std::{
    future::Future,
    time::{Duration, Instant},
};

const ROUNDS: usize = 31;

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
    for round in 0..ROUNDS {
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
    println!(
        "| {name} | {} | {} | {:.2}× | {target} |",
        per(median(raws)),
        per(median(fws)),
        median(ratios)
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let server = support::RedisServer::start().expect("the Redis comparisons need redis-server");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!("| group | raw per op | fleetwire per op | fleetwire time / raw time (median of {ROUNDS} interleaved rounds) | target |");
        println!("|---|---|---|---|---|");
        let env = envelope();
        let codec = Codec::default();

        let bus = MemoryBus::builder().max_len(1000).build();
        let s = StreamName::new("mem").unwrap();
        compare("publish/memory vs encode into a pre-sized buffer", "≤ 2.0×", 20_000,
            || async { std::hint::black_box(codec.encode(&env).unwrap()); },
            || async { bus.publish(&s, &env).await.unwrap(); }).await;
        compare("publish/memory vs rmp_serde::to_vec_named", "≤ 2.0×", 20_000,
            || async { std::hint::black_box(rmp_serde::to_vec_named(&env).unwrap()); },
            || async { bus.publish(&s, &env).await.unwrap(); }).await;

        let url = server.url();
        let backend = RedisBackend::builder().url(&url).max_len(10_000).build().unwrap();
        let raw = redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
        let rbus = backend.bus();
        let body = codec.encode(&env).unwrap();
        let fw_s = StreamName::new("bench:fw").unwrap();

        compare("publish/redis/sequential", "ops/s ≥ 0.9× raw, i.e. ≤ 1.11×", 200,
            || { let (mut c, cmd) = (raw.clone(), raw_xadd("bench:raw", &body)); async move { cmd.query_async::<String>(&mut c).await.unwrap(); } },
            || async { rbus.publish(&fw_s, &env).await.unwrap(); }).await;
        compare("publish/redis/concurrent (50 at once)", "≤ 1.11×", 20,
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
        let batch: Vec<Envelope> = (0..64).map(|_| envelope()).collect();
        compare("publish/redis/batch64", "≤ 1.11×", 20,
            || { let mut c = raw.clone(); let mut p = redis::pipe();
                 for e in &batch { p.add_command(raw_xadd("bench:raw", &codec.encode(e).unwrap())); }
                 async move { p.query_async::<Vec<String>>(&mut c).await.unwrap(); } },
            || async { rbus.publish_batch(&fw_s, &batch).await.unwrap(); }).await;

        // consume: each op fills 64 entries (untimed share is equal on both sides) then reads and acks them.
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

        let live = backend.liveness();
        let ids: Vec<InstanceId> = (0..10_000).map(|i| InstanceId::new(format!("rt-{i}")).unwrap()).collect();
        for id in ids.iter().step_by(2) { live.touch(id, Duration::from_secs(600)).await.unwrap(); }
        let keys: Vec<String> = ids.iter().map(|i| format!("sg:liveness:{i}")).collect();
        compare("liveness/redis/is_alive_batch_10k vs MGET", "≤ 1.2×", 3,
            || { let mut c = raw.clone(); let cmd = { let mut m = redis::cmd("MGET"); m.arg(&keys); m }; async move { cmd.query_async::<Vec<Option<String>>>(&mut c).await.unwrap(); } },
            || async { live.is_alive_batch(&ids).await.unwrap(); }).await;

        let reg = backend.registry();
        let svc = ServiceName::new("bench-svc").unwrap();
        let one = Instance::new(svc.clone(), InstanceId::new("hb-1").unwrap(), Status::Running);
        reg.register(&one, Duration::from_secs(600)).await.unwrap();
        compare("registry/redis/heartbeat vs PEXPIRE", "(no target)", 200,
            || { let mut c = raw.clone(); async move { redis::cmd("PEXPIRE").arg("sg:registry:service:bench-svc:hb-1").arg(600_000).query_async::<bool>(&mut c).await.unwrap(); } },
            || async { assert!(reg.heartbeat(&svc, &one.id, Duration::from_secs(600)).await.unwrap()); }).await;

        let fleet = ServiceName::new("bench-fleet").unwrap();
        let all: Vec<_> = (0..10_000).map(|i| Instance::new(fleet.clone(), InstanceId::new(format!("i-{i}")).unwrap(), Status::Running)).collect();
        for chunk in all.chunks(500) {
            for r in join_all(chunk.iter().map(|i| reg.register(i, Duration::from_secs(600)))).await { r.unwrap(); }
        }
        let keys: Vec<String> = (0..10_000).map(|i| format!("sg:registry:service:bench-fleet:i-{i}")).collect();
        compare("registry/redis/list_10k vs MGET of the known keys", "(figure)", 2,
            || { let mut c = raw.clone(); let mut p = redis::pipe(); for ch in keys.chunks(1000) { p.cmd("MGET").arg(ch); }
                 async move { p.query_async::<Vec<Vec<Option<Vec<u8>>>>>(&mut c).await.unwrap(); } },
            || async { assert_eq!(reg.list(Some(&fleet)).await.unwrap().len(), 10_000); }).await;
    });
}
