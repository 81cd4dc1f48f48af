//! Publish-path benchmarks. Every group holds its own raw baseline measured
//! in the same run, so results read as ratios on a noisy machine.
//!
//!     cargo bench --all-features --bench fleetwire
//!
//! The Redis groups start a private `redis-server` (no persistence) on a free port.

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use common::{envelope, raw_xadd};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fleetwire::{
    memory::MemoryBus, redis::RedisBackend, ConsumerName, Envelope, EventBus, GroupName, Instance,
    InstanceId, LivenessStore, ReadOptions, RegistryStore, ServiceName, StartFrom, Status, StreamName,
};
use futures_util::future::join_all;
use redis::AsyncCommands;
use std::{
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

fn server() -> &'static support::RedisServer {
    static SERVER: OnceLock<support::RedisServer> = OnceLock::new();
    SERVER.get_or_init(|| support::RedisServer::start().expect("the Redis benches need redis-server"))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn config(c: &mut Criterion) -> &mut Criterion {
    c
}

fn publish_memory(c: &mut Criterion) {
    let rt = rt();
    let env = envelope();
    let encoded = rmp_serde::to_vec_named(&env).unwrap();
    println!("envelope encodes to {} bytes", encoded.len());
    let mut g = config(c).benchmark_group("publish/memory");
    g.throughput(Throughput::Elements(1));
    g.bench_function("raw_rmp_serde_encode", |b| {
        b.iter(|| rmp_serde::to_vec_named(std::hint::black_box(&env)).unwrap())
    });
    let bus = MemoryBus::builder().max_len(1000).build();
    let s = StreamName::new("bench").unwrap();
    g.bench_function("fleetwire_publish", |b| {
        b.to_async(&rt).iter(|| bus.publish(&s, &env))
    });
    g.finish();
}

struct Redis {
    rt: tokio::runtime::Runtime,
    backend: RedisBackend,
    raw: redis::aio::MultiplexedConnection,
}

fn redis_setup() -> Redis {
    let rt = rt();
    let url = server().url();
    let (backend, raw) = rt.block_on(async {
        let backend = RedisBackend::builder().url(&url).max_len(10_000).build().unwrap();
        let raw = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        (backend, raw)
    });
    Redis { rt, backend, raw }
}

fn publish_redis(c: &mut Criterion) {
    let r = redis_setup();
    let bus = Arc::new(r.backend.bus());
    let env = envelope();
    let body = fleetwire::Codec::default().encode(&env).unwrap();
    let (fw, raw) = (StreamName::new("bench:fw").unwrap(), "bench:raw");

    let mut g = config(c).benchmark_group("publish/redis/sequential");
    g.throughput(Throughput::Elements(1));
    g.bench_function("raw_xadd", |b| {
        b.to_async(&r.rt).iter(|| async {
            raw_xadd(raw, &body)
                .query_async::<String>(&mut r.raw.clone())
                .await
                .unwrap()
        })
    });
    g.bench_function("fleetwire_publish", |b| {
        b.to_async(&r.rt)
            .iter(|| async { bus.publish(&fw, &env).await.unwrap() })
    });
    g.finish();

    let mut g = config(c).benchmark_group("publish/redis/concurrent");
    g.throughput(Throughput::Elements(50));
    g.bench_function("raw_xadd_x50", |b| {
        b.to_async(&r.rt).iter(|| {
            join_all((0..50).map(|_| {
                let mut conn = r.raw.clone();
                let cmd = raw_xadd(raw, &body);
                async move { cmd.query_async::<String>(&mut conn).await.unwrap() }
            }))
        })
    });
    g.bench_function("fleetwire_publish_x50", |b| {
        b.to_async(&r.rt)
            .iter(|| join_all((0..50).map(|_| async { bus.publish(&fw, &env).await.unwrap() })))
    });
    g.finish();

    let batch: Vec<Envelope> = (0..64).map(|_| envelope()).collect();
    let mut g = config(c).benchmark_group("publish/redis/batch64");
    g.throughput(Throughput::Elements(64));
    g.bench_function("raw_pipeline_64_xadd", |b| {
        b.to_async(&r.rt).iter(|| async {
            let mut p = redis::pipe();
            for e in &batch {
                p.add_command(raw_xadd(raw, &fleetwire::Codec::default().encode(e).unwrap()));
            }
            p.query_async::<Vec<String>>(&mut r.raw.clone()).await.unwrap()
        })
    });
    g.bench_function("fleetwire_publish_batch_64", |b| {
        b.to_async(&r.rt)
            .iter(|| async { bus.publish_batch(&fw, &batch).await.unwrap() })
    });
    g.finish();
}

fn consume_redis(c: &mut Criterion) {
    let r = redis_setup();
    let bus = r.backend.bus();
    let body = fleetwire::Codec::default().encode(&envelope()).unwrap();
    let group = GroupName::new("bench:group").unwrap();
    const N: usize = 64;
    let fill = |stream: &str| {
        let mut p = redis::pipe();
        for _ in 0..N {
            p.add_command(raw_xadd(stream, &body)).ignore();
        }
        p
    };
    let mut g = config(c).benchmark_group("consume/redis");
    g.throughput(Throughput::Elements(N as u64));
    for (name, stream) in [
        ("raw_xreadgroup_xack", "bench:consume:raw"),
        ("fleetwire_read_ack", "bench:consume:fw"),
    ] {
        let s = StreamName::new(stream).unwrap();
        r.rt.block_on(bus.ensure_group(&s, &group, StartFrom::Latest))
            .unwrap();
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.to_async(&r.rt).iter_custom(|iters| {
                let (bus, s, group, mut conn) = (bus.clone(), s.clone(), group.clone(), r.raw.clone());
                let fill = fill(stream);
                async move {
                    let mut total = Duration::ZERO;
                    for i in 0..iters {
                        fill.query_async::<()>(&mut conn).await.unwrap();
                        let consumer = if i % 2 == 0 { "c1" } else { "c2" };
                        let start = Instant::now();
                        if name.starts_with("raw") {
                            let reply: redis::streams::StreamReadReply = conn
                                .xread_options(
                                    &[stream],
                                    &[">"],
                                    &redis::streams::StreamReadOptions::default()
                                        .group("bench:group", consumer)
                                        .count(N),
                                )
                                .await
                                .unwrap();
                            let ids: Vec<String> = reply
                                .keys
                                .iter()
                                .flat_map(|k| k.ids.iter().map(|e| e.id.clone()))
                                .collect();
                            let _: u64 = conn.xack(stream, "bench:group", &ids).await.unwrap();
                            assert_eq!(ids.len(), N);
                        } else {
                            let got = bus
                                .read(
                                    &s,
                                    &group,
                                    &ConsumerName::new(consumer).unwrap(),
                                    ReadOptions::count(N),
                                )
                                .await
                                .unwrap();
                            let ids: Vec<_> = got.iter().map(|d| d.id).collect();
                            bus.ack(&s, &group, &ids).await.unwrap();
                            assert_eq!(ids.len(), N);
                        }
                        total += start.elapsed();
                    }
                    total
                }
            })
        });
    }
    g.finish();
}

fn liveness_redis(c: &mut Criterion) {
    let r = redis_setup();
    let live = r.backend.liveness();
    let ids: Vec<InstanceId> = (0..10_000)
        .map(|i| InstanceId::new(format!("rt-{i}")).unwrap())
        .collect();
    let keys: Vec<String> = ids.iter().map(|i| format!("sg:liveness:{i}")).collect();
    r.rt.block_on(async {
        for id in ids.iter().step_by(2) {
            live.touch(id, Duration::from_secs(600)).await.unwrap();
        }
    });
    let mut g = config(c).benchmark_group("liveness/redis/is_alive_batch_10k");
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("raw_mget_10k", |b| {
        b.to_async(&r.rt).iter(|| async {
            redis::cmd("MGET")
                .arg(&keys)
                .query_async::<Vec<Option<String>>>(&mut r.raw.clone())
                .await
                .unwrap()
        })
    });
    g.bench_function("fleetwire_is_alive_batch_10k", |b| {
        b.to_async(&r.rt)
            .iter(|| async { live.is_alive_batch(&ids).await.unwrap() })
    });
    g.finish();
}

fn registry_redis(c: &mut Criterion) {
    let r = redis_setup();
    let reg = r.backend.registry();
    let svc = ServiceName::new("bench-svc").unwrap();
    let one = Instance::new(svc.clone(), InstanceId::new("hb-1").unwrap(), Status::Running);
    r.rt.block_on(reg.register(&one, Duration::from_secs(600)))
        .unwrap();
    let mut g = config(c).benchmark_group("registry/redis/heartbeat");
    g.throughput(Throughput::Elements(1));
    g.bench_function("raw_pexpire", |b| {
        b.to_async(&r.rt).iter(|| async {
            redis::cmd("PEXPIRE")
                .arg("sg:registry:service:bench-svc:hb-1")
                .arg(600_000)
                .query_async::<bool>(&mut r.raw.clone())
                .await
                .unwrap()
        })
    });
    g.bench_function("fleetwire_heartbeat", |b| {
        b.to_async(&r.rt).iter(|| async {
            reg.heartbeat(&svc, &one.id, Duration::from_secs(600))
                .await
                .unwrap()
        })
    });
    g.finish();

    let fleet = ServiceName::new("bench-fleet").unwrap();
    r.rt.block_on(async {
        let ids: Vec<_> = (0..10_000)
            .map(|i| {
                Instance::new(
                    fleet.clone(),
                    InstanceId::new(format!("i-{i}")).unwrap(),
                    Status::Running,
                )
            })
            .collect();
        for chunk in ids.chunks(500) {
            join_all(chunk.iter().map(|i| reg.register(i, Duration::from_secs(600))))
                .await
                .into_iter()
                .collect::<fleetwire::Result<Vec<_>>>()
                .unwrap();
        }
    });
    let keys: Vec<String> = (0..10_000)
        .map(|i| format!("sg:registry:service:bench-fleet:i-{i}"))
        .collect();
    let mut g = config(c).benchmark_group("registry/redis/list_10k");
    g.throughput(Throughput::Elements(10_000));
    g.sample_size(10);
    g.bench_function("raw_mget_10k_known_keys", |b| {
        b.to_async(&r.rt).iter(|| async {
            let mut p = redis::pipe();
            for chunk in keys.chunks(1000) {
                p.cmd("MGET").arg(chunk);
            }
            p.query_async::<Vec<Vec<Option<Vec<u8>>>>>(&mut r.raw.clone())
                .await
                .unwrap()
        })
    });
    g.bench_function("fleetwire_list_10k", |b| {
        b.to_async(&r.rt).iter(|| async {
            let l = reg.list(Some(&fleet)).await.unwrap();
            assert_eq!(l.len(), 10_000);
            l
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = publish_memory, publish_redis, consume_redis, liveness_redis, registry_redis
}
criterion_main!(benches);
