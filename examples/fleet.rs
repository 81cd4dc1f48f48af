//! A small fleet in one process: a gateway publishing inbound messages, two
//! workers in one consumer group answering on the outbound stream and
//! calling a tools service over request/reply, each under its own
//! Lifecycle, with the health server on a local port.
//!
//!     cargo run --example fleet                      # in memory, exits by itself
//!     cargo run --example fleet -- --forever         # until Ctrl-C
//!     cargo run --example fleet --features redis -- --redis redis://127.0.0.1:6379

use async_trait::async_trait;
use fleetwire::{
    consumer::{HandlerResult, Runner},
    health::Health,
    monitor::FleetMonitor,
    request::{self, RequestClient},
    service::{Context, Lifecycle, Service},
    topology::{Role, Topology},
    ConsumerName, Delivery, Envelope, EventBus, EventBusExt, ReadOptions, RegistryStore, Result,
};
use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    answered: AtomicU64,
    tool_calls: AtomicU64,
}

struct Gateway {
    bus: Arc<dyn EventBus>,
    topology: Topology,
    counters: Arc<Counters>,
}

#[async_trait]
impl Service for Gateway {
    async fn on_start(&self, _: &Context) -> Result<()> {
        self.topology
            .ensure_streams(self.bus.as_ref(), Role::Gateway, Some(&["webchat"]))
            .await
            .map(drop)
    }

    async fn run(&self, ctx: &Context) -> Result<()> {
        let mut n = 0u64;
        while !ctx.shutdown().is_triggered() {
            n += 1;
            let text = format!("hello #{n}");
            let env = Envelope::new("message.inbound")
                .with_header("platform", "webchat")
                .with_payload(&text)?;
            self.bus.publish(&self.topology.inbound, &env).await?;
            self.counters.published.fetch_add(1, Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    async fn on_stop(&self, _: &Context) -> Result<()> {
        Ok(())
    }
}

struct Worker {
    bus: Arc<dyn EventBus>,
    topology: Topology,
    counters: Arc<Counters>,
    tools: Arc<tokio::sync::OnceCell<RequestClient>>,
}

#[async_trait]
impl Service for Worker {
    async fn on_start(&self, ctx: &Context) -> Result<()> {
        self.topology
            .ensure_streams(self.bus.as_ref(), Role::Worker, None)
            .await?;
        let reply_to = self.topology.tools_reply(ctx.instance())?;
        let client = RequestClient::start(self.bus.clone(), self.topology.tools.clone(), reply_to).await?;
        let _ = self.tools.set(client);
        Ok(())
    }

    /// The at-least-once runner does the read / ack / retry / dead-letter
    /// loop; a Redis restart is waited out, not fatal.
    async fn run(&self, ctx: &Context) -> Result<()> {
        let (bus, counters, tools) = (self.bus.clone(), self.counters.clone(), self.tools.clone());
        let outbound = self.topology.outbound("webchat")?;
        let runner = Runner::builder(
            self.bus.clone(),
            self.topology.inbound.clone(),
            self.topology.worker_group.clone(),
            ConsumerName::new(ctx.instance().as_str())?,
        )
        .handler(move |d: Delivery| {
            let (bus, counters, tools, outbound) =
                (bus.clone(), counters.clone(), tools.clone(), outbound.clone());
            async move {
                let text: String = d.envelope()?.payload_as()?;
                let answer = match tools.get() {
                    Some(tools) if text.ends_with('0') => {
                        let req = Envelope::new("tool.upper").with_payload(&text)?;
                        let reply = tools.request(req, Duration::from_secs(2)).await?;
                        counters.tool_calls.fetch_add(1, Relaxed);
                        reply.payload_as::<String>()?
                    }
                    _ => format!("echo: {text}"),
                };
                bus.publish_value(&outbound, "message.outbound", &answer).await?;
                counters.answered.fetch_add(1, Relaxed);
                HandlerResult::Ok(())
            }
        })
        .build()?;
        runner.run(ctx.stopped()).await.map(drop)
    }

    async fn on_stop(&self, _: &Context) -> Result<()> {
        Ok(())
    }
}

struct Tools {
    bus: Arc<dyn EventBus>,
    topology: Topology,
}

#[async_trait]
impl Service for Tools {
    async fn on_start(&self, _: &Context) -> Result<()> {
        self.topology
            .ensure_streams(self.bus.as_ref(), Role::Tools, None)
            .await
            .map(drop)
    }

    async fn run(&self, ctx: &Context) -> Result<()> {
        let me = ConsumerName::new(ctx.instance().as_str())?;
        while !ctx.shutdown().is_triggered() {
            let got = self
                .bus
                .read(
                    &self.topology.tools,
                    &self.topology.tools_group,
                    &me,
                    ReadOptions::count(16).block(Duration::from_millis(200)),
                )
                .await?;
            for d in &got {
                let req = d.envelope()?;
                let text: String = req.payload_as()?;
                request::reply(
                    self.bus.as_ref(),
                    &self.topology.tools_reply_prefix,
                    &req,
                    Envelope::new("tool.result").with_payload(&text.to_uppercase())?,
                )
                .await?;
            }
            self.bus
                .ack(
                    &self.topology.tools,
                    &self.topology.tools_group,
                    &got.iter().map(|d| d.id).collect::<Vec<_>>(),
                )
                .await?;
        }
        Ok(())
    }

    async fn on_stop(&self, _: &Context) -> Result<()> {
        Ok(())
    }
}

struct Args {
    forever: bool,
    rounds: u32,
    redis: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        forever: false,
        rounds: 5,
        redis: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--forever" => a.forever = true,
            "--rounds" => a.rounds = it.next().and_then(|n| n.parse().ok()).unwrap_or(5),
            "--redis" => a.redis = it.next(),
            other => eprintln!("ignoring unknown argument `{other}`"),
        }
    }
    a
}

fn backends(args: &Args) -> Result<(Arc<dyn RegistryStore>, Arc<dyn EventBus>)> {
    if let Some(url) = &args.redis {
        #[cfg(feature = "redis")]
        {
            let redis = fleetwire::redis::RedisBackend::builder()
                .url(url)
                .max_len(10_000)
                .build()?;
            return Ok((Arc::new(redis.registry()), Arc::new(redis.bus())));
        }
        #[cfg(not(feature = "redis"))]
        return Err(fleetwire::Error::new(
            fleetwire::ErrorKind::Unsupported,
            format!("--redis {url}: build with --features redis"),
        ));
    }
    Ok((
        Arc::new(fleetwire::memory::MemoryRegistry::new()),
        Arc::new(fleetwire::memory::MemoryBus::new()),
    ))
}

async fn print_table(
    registry: &dyn RegistryStore,
    bus: &dyn EventBus,
    monitor: &FleetMonitor,
    topology: &Topology,
    c: &Counters,
) -> Result<()> {
    let alive = registry.list(None).await?;
    let backlog = bus.backlog(&topology.inbound, &topology.worker_group).await?;
    println!(
        "
{:<10} {:<8} {:>8}  alive instances",
        "worker", "status", "seen(s)"
    );
    for row in monitor.snapshot() {
        let ids: Vec<_> = alive
            .iter()
            .filter(|i| i.service.as_str() == row.name)
            .map(|i| format!("{}({})", i.id, i.status))
            .collect();
        let since = row
            .seconds_since
            .map(|s| format!("{s:.1}"))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<10} {:<8} {:>8}  {}",
            row.name,
            format!("{:?}", row.status).to_lowercase(),
            since,
            ids.join(" ")
        );
    }
    println!(
        "published {}  answered+acked {}  tool calls {}  inbound length {}  pending {}  lag {}",
        c.published.load(Relaxed),
        c.answered.load(Relaxed),
        c.tool_calls.load(Relaxed),
        backlog.length,
        backlog.pending,
        backlog.lag.map_or("-".into(), |l| l.to_string()),
    );
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .init();
    let args = args();
    match demo(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet demo failed: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn demo(args: Args) -> Result<()> {
    let (registry, bus) = backends(&args)?;
    let topology = Topology::default();
    let counters = Arc::new(Counters::default());
    let beat = Duration::from_secs(1);
    let monitor = Arc::new(FleetMonitor::new(["gateway", "worker", "tools", "billing"], beat));
    let _monitor_task = monitor.start(bus.clone()).await?;

    let health = Health::default();
    health.set_fleet(monitor.clone());
    let fleet: Vec<(&str, &str, Arc<dyn Service>)> = vec![
        (
            "tools",
            "tools-1",
            Arc::new(Tools {
                bus: bus.clone(),
                topology: topology.clone(),
            }),
        ),
        (
            "worker",
            "worker-1",
            Arc::new(Worker {
                bus: bus.clone(),
                topology: topology.clone(),
                counters: counters.clone(),
                tools: Default::default(),
            }),
        ),
        (
            "worker",
            "worker-2",
            Arc::new(Worker {
                bus: bus.clone(),
                topology: topology.clone(),
                counters: counters.clone(),
                tools: Default::default(),
            }),
        ),
        (
            "gateway",
            "gateway-1",
            Arc::new(Gateway {
                bus: bus.clone(),
                topology: topology.clone(),
                counters: counters.clone(),
            }),
        ),
    ];
    let port = std::env::var("SG_HEALTH_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let server = Arc::new(fleetwire::http::HttpHealthServer::new(
        ([127, 0, 0, 1], port).into(),
    ));
    let mut stops = Vec::new();
    let mut tasks = Vec::new();
    for (service, instance, svc) in fleet {
        let mut b = Lifecycle::builder(service, instance)?
            .registry(registry.clone())
            .bus(bus.clone())
            .jitter(Duration::from_millis(200))
            .ttl(Duration::from_secs(3))
            .health_heartbeat_every(beat)
            .handle_signals(false);
        if service == "gateway" {
            b = b.health(health.clone()).health_server(server.clone());
        }
        let lifecycle = b.build();
        stops.push(lifecycle.shutdown_handle());
        tasks.push(tokio::spawn(async move { lifecycle.run(svc.as_ref()).await }));
    }

    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut round = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(beat) => {}
            _ = &mut ctrl_c => break,
        }
        round += 1;
        print_table(registry.as_ref(), bus.as_ref(), &monitor, &topology, &counters).await?;
        if let (1, Some(addr)) = (round, server.local_addr()) {
            println!("(health server on http://{addr}: /livez /readyz /health /fleet)");
        }
        if !args.forever && round >= args.rounds {
            break;
        }
    }

    println!("\nshutting down the fleet");
    for s in &stops {
        s.trigger();
    }
    for t in tasks {
        t.await.map_err(|e| {
            fleetwire::Error::new(fleetwire::ErrorKind::Shutdown, format!("service task: {e}"))
        })??;
    }
    let left = registry.list(None).await?;
    println!(
        "registry after shutdown: {} instances; {} messages published, {} answered",
        left.len(),
        counters.published.load(Relaxed),
        counters.answered.load(Relaxed)
    );
    if !left.is_empty() {
        return Err(fleetwire::Error::new(
            fleetwire::ErrorKind::Shutdown,
            format!("still registered: {left:?}"),
        ));
    }
    Ok(())
}
