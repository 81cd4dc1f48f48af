//! Fleet control across processes, on a real redis-server: three instances
//! of one service run as child processes (this test binary again, running
//! only the `child` test) under a small supervisor that starts a child again
//! when it exits with the restart code. The parent sends a roll call and an
//! application command, rolls a restart through the service one instance at
//! a time while a poller checks that two instances are ready at every moment
//! (registry status and each child's `/readyz`), then quiets one instance
//! and measures how soon its consumer stops reading, and resumes it.
#![cfg(all(feature = "redis", feature = "rt-tokio", feature = "http"))]

mod support;

use fleetwire::{
    consumer::{HandlerResult, Runner},
    control::{ControlClient, ControlKey, Op, RollingEvent, RollingOptions, Target, QUIET_STATUS},
    http::HttpHealthServer,
    redis::RedisBackend,
    service::{Context, Lifecycle, Service, EXIT_RESTART},
    ConsumerName, Delivery, Envelope, EventBus, GroupName, MessageId, RegistryStore, ServiceName, Status,
    StreamName,
};
use std::{
    collections::BTreeMap,
    fs::OpenOptions,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Set in a child's environment: `{instance} {redis url} {health port}`.
const CHILD_ENV: &str = "FLEETWIRE_CONTROL_FLEET_CHILD";
const SERVICE: &str = "ctlfleet";
const KEY: &str = "control fleet test key, 32 bytes";
const WORK: &str = "ctlfleet:work";
/// The children's consumer read block: a quiet runner stops within it.
const RUNNER_BLOCK: Duration = Duration::from_millis(250);
const IDS: [&str; 3] = ["w0", "w1", "w2"];
/// How long a child's `on_start` takes: a restarted instance is not ready
/// for at least this long, long enough for the poller to see it down.
const BOOT_WORK: Duration = Duration::from_millis(400);

/// The child: one instance of the service, with a consumer on `WORK`.
#[test]
fn child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split(' ').collect();
    let (id, url, port) = (parts[0], parts[1], parts[2].parse::<u16>().expect("a port"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_ansi(false)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let code = rt.block_on(async {
        let redis = RedisBackend::builder().url(url).build().expect("backend");
        let bus: Arc<dyn EventBus> = Arc::new(redis.bus());
        // The control key comes from SG_CONTROL_KEY, as in production.
        let lifecycle = Lifecycle::builder(SERVICE, id)
            .unwrap()
            .registry(Arc::new(redis.registry()))
            .bus(bus.clone())
            .health_server(Arc::new(HttpHealthServer::new(SocketAddr::from((
                [127, 0, 0, 1],
                port,
            )))))
            .metadata("health_port", port)
            .jitter(Duration::ZERO)
            .ttl(Duration::from_secs(3))
            .op_timeout(Duration::from_secs(2))
            .shutdown_timeout(Duration::from_secs(5))
            .build();
        let worker = Worker {
            bus,
            id: id.to_owned(),
        };
        lifecycle.run_process(&worker).await
    });
    let n = if code == ExitCode::from(EXIT_RESTART) {
        i32::from(EXIT_RESTART)
    } else if code == ExitCode::SUCCESS {
        0
    } else {
        1
    };
    std::process::exit(n);
}

struct Worker {
    bus: Arc<dyn EventBus>,
    id: String,
}

#[fleetwire::async_trait]
impl Service for Worker {
    async fn on_start(&self, _: &Context) -> fleetwire::Result<()> {
        tokio::time::sleep(BOOT_WORK).await;
        Ok(())
    }

    async fn run(&self, ctx: &Context) -> fleetwire::Result<()> {
        let runner = Runner::builder(
            self.bus.clone(),
            StreamName::new(WORK)?,
            GroupName::new(format!("work-{}", self.id))?,
            ConsumerName::new(&self.id)?,
        )
        .handler(|_: Delivery| async { HandlerResult::Ok(()) })
        .pause_with(ctx.pause().clone())
        .block(RUNNER_BLOCK)
        .build()?;
        runner.run(ctx.stopped()).await?;
        Ok(())
    }

    async fn on_stop(&self, _: &Context) -> fleetwire::Result<()> {
        Ok(())
    }

    async fn on_command(
        &self,
        _: &Context,
        command: &fleetwire::control::Command,
    ) -> fleetwire::Result<serde_json::Value> {
        match command.op.name() {
            "pull" => Ok(serde_json::json!({ "pulled": command.args["ref"], "instance": self.id })),
            other => Err(fleetwire::Error::new(
                fleetwire::ErrorKind::Unsupported,
                format!("no `{other}` here"),
            )),
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn_child(id: &str, url: &str, port: u16, key: &str, log: &Path) -> std::process::Child {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("child log");
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, format!("{id} {url} {port}"))
        .env("SG_CONTROL_KEY", key)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn child")
}

/// One supervised instance: restarted while it exits with the restart code.
struct Slot {
    id: &'static str,
    port: u16,
    pid: Arc<Mutex<Option<u32>>>,
    restarts: Arc<AtomicUsize>,
    exits: Arc<Mutex<Vec<i32>>>,
    thread: Option<JoinHandle<()>>,
}

struct Supervisor {
    slots: Vec<Slot>,
    stopping: Arc<AtomicBool>,
    logs: PathBuf,
}

impl Supervisor {
    fn start(url: &str, logs: &Path) -> Self {
        let stopping = Arc::new(AtomicBool::new(false));
        let slots = IDS
            .iter()
            .map(|&id| {
                let port = free_port();
                let pid = Arc::new(Mutex::new(None));
                let restarts = Arc::new(AtomicUsize::new(0));
                let exits = Arc::new(Mutex::new(Vec::new()));
                let (p, r, e, s) = (pid.clone(), restarts.clone(), exits.clone(), stopping.clone());
                let (url, log) = (url.to_owned(), logs.join(format!("{id}.log")));
                let thread = std::thread::spawn(move || loop {
                    let mut child = {
                        // Checked under the pid lock `stop` takes: a child is
                        // either started before the stop (and signalled) or never.
                        let mut pid = p.lock().unwrap();
                        if s.load(Ordering::SeqCst) {
                            return;
                        }
                        let child = spawn_child(id, &url, port, KEY, &log);
                        *pid = Some(child.id());
                        child
                    };
                    let code = child.wait().map(|s| s.code().unwrap_or(-1)).unwrap_or(-1);
                    *p.lock().unwrap() = None;
                    e.lock().unwrap().push(code);
                    if code != i32::from(EXIT_RESTART) {
                        return;
                    }
                    r.fetch_add(1, Ordering::SeqCst);
                });
                Slot {
                    id,
                    port,
                    pid,
                    restarts,
                    exits,
                    thread: Some(thread),
                }
            })
            .collect();
        Self {
            slots,
            stopping,
            logs: logs.to_owned(),
        }
    }

    fn signal(&self, signal: &str) {
        self.stopping.store(true, Ordering::SeqCst);
        for slot in &self.slots {
            if let Some(pid) = *slot.pid.lock().unwrap() {
                let _ = Command::new("kill").args([signal, &pid.to_string()]).status();
            }
        }
    }

    /// SIGTERM every child and wait for the slots to end; each slot's exit codes.
    fn stop(&mut self) -> BTreeMap<&'static str, Vec<i32>> {
        self.signal("-TERM");
        for slot in &mut self.slots {
            if let Some(t) = slot.thread.take() {
                t.join().unwrap();
            }
        }
        self.slots
            .iter()
            .map(|s| (s.id, s.exits.lock().unwrap().clone()))
            .collect()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if self.slots.iter().any(|s| s.thread.is_some()) {
            self.signal("-KILL");
            for slot in &mut self.slots {
                if let Some(t) = slot.thread.take() {
                    let _ = t.join();
                }
            }
        }
        if std::thread::panicking() {
            for id in IDS {
                let log = std::fs::read_to_string(self.logs.join(format!("{id}.log"))).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("--- last lines of child {id}'s log ---");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// The status code of `GET /readyz` on `port`; 0 when nothing answers.
async fn readyz(port: u16) -> u16 {
    sample_readyz(port).await.unwrap_or(0)
}

/// Like [`readyz`], but `None` when the answer takes over 500 ms: on a
/// loaded machine that says nothing about readiness.
async fn sample_readyz(port: u16) -> Option<u16> {
    let get = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    match tokio::time::timeout(Duration::from_millis(500), get).await {
        Ok(Ok(buf)) => Some(
            String::from_utf8_lossy(&buf)
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0),
        ),
        Ok(Err(_)) => Some(0),
        Err(_) => None,
    }
}

/// How many running instances answer `/readyz` with 200 now; `None` when
/// the sample says nothing (the listing failed or a probe was too slow).
async fn ready_now(registry: &dyn RegistryStore, service: &ServiceName) -> Option<usize> {
    let listed = registry.list(Some(service)).await.ok()?;
    let probes = listed
        .iter()
        .filter(|i| i.status == Status::Running)
        .filter_map(|i| i.metadata.get("health_port")?.as_u64())
        .map(|port| sample_readyz(port as u16));
    let codes: Option<Vec<u16>> = futures_util::future::join_all(probes).await.into_iter().collect();
    Some(codes?.into_iter().filter(|&c| c == 200).count())
}

async fn last_delivered(bus: &dyn EventBus, group: &str) -> Option<MessageId> {
    let info = bus.stream_info(&StreamName::new(WORK).unwrap()).await.ok()?;
    info.groups
        .into_iter()
        .find(|g| g.name == group)
        .map(|g| g.last_delivered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_children_roll_call_rolling_restart_quiet_and_resume() {
    let Some(server) = support::RedisServer::start() else {
        return;
    };
    let began = Instant::now();
    let redis = RedisBackend::builder().url(server.url()).build().unwrap();
    let registry: Arc<dyn RegistryStore> = Arc::new(redis.registry());
    let bus: Arc<dyn EventBus> = Arc::new(redis.bus());
    let service = ServiceName::new(SERVICE).unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mut fleet = Supervisor::start(&server.url(), logs.path());
    let client = ControlClient::builder(bus.clone(), ControlKey::new(KEY).unwrap())
        .registry(registry.clone())
        .sender("control_fleet test")
        .build()
        .await
        .unwrap();

    // Roll call: every child answers a ping to the service, ready.
    let deadline = Instant::now() + Duration::from_secs(30);
    let roll = loop {
        let roll = client
            .call(
                Target::Service(service.clone()),
                Op::Ping,
                serde_json::Value::Null,
                Duration::from_secs(2),
            )
            .await
            .unwrap();
        let ready = roll
            .instances
            .iter()
            .filter(|r| {
                r.outcome
                    .as_ref()
                    .and_then(|o| o.result())
                    .is_some_and(|v| v["ready"] == true)
            })
            .count();
        if ready == IDS.len() {
            break roll;
        }
        assert!(
            Instant::now() < deadline,
            "the children never all answered ready: {roll:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let pids = |r: &fleetwire::control::Results| -> BTreeMap<String, u64> {
        r.instances
            .iter()
            .map(|i| {
                let pid = i
                    .outcome
                    .as_ref()
                    .and_then(|o| o.result())
                    .and_then(|v| v["pid"].as_u64());
                (i.instance.to_string(), pid.unwrap_or(0))
            })
            .collect()
    };
    let before = pids(&roll);
    println!("roll call after {:?}: {before:?}", began.elapsed());

    // An application command, run by each instance's hook.
    let pulled = client
        .call(
            Target::Service(service.clone()),
            Op::app("pull").unwrap(),
            serde_json::json!({"ref": "v2"}),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    for id in IDS {
        let result = pulled.get(id).and_then(|r| r.outcome.as_ref()?.result().cloned());
        assert_eq!(
            result,
            Some(serde_json::json!({"pulled": "v2", "instance": id})),
            "{pulled:?}"
        );
    }

    // Rolling restart, one at a time, watched.
    let watching = Arc::new(AtomicBool::new(true));
    let (w, reg, svc) = (watching.clone(), registry.clone(), service.clone());
    let poller = tokio::spawn(async move {
        let mut samples = Vec::new();
        while w.load(Ordering::SeqCst) {
            samples.extend(ready_now(reg.as_ref(), &svc).await);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        samples
    });
    let rolled = Instant::now();
    let report = client
        .rolling_restart(
            &service,
            RollingOptions::default()
                .at_once(1)
                .back_within(Duration::from_secs(20))
                .on_progress(|e| match e {
                    RollingEvent::Back(id, took) => println!("  {id} back {took:?} after its restart"),
                    other => println!("  {other:?}"),
                }),
        )
        .await
        .unwrap();
    watching.store(false, Ordering::SeqCst);
    let samples = poller.await.unwrap();
    let fewest = samples.iter().copied().min().unwrap_or(0);
    println!(
        "rolling restart took {:?}; {} readiness samples, fewest ready {fewest}, histogram {:?}",
        rolled.elapsed(),
        samples.len(),
        samples.iter().fold([0usize; 4], |mut h, &n| {
            h[n.min(3)] += 1;
            h
        })
    );
    let restarted: Vec<&str> = report.restarted.iter().map(|(i, _)| i.as_str()).collect();
    assert_eq!(restarted, IDS, "{report:?}");
    for slot in &fleet.slots {
        assert_eq!(slot.restarts.load(Ordering::SeqCst), 1, "restarts of {}", slot.id);
    }
    assert!(samples.len() >= 50, "only {} readiness samples", samples.len());
    // The poller saw instances down (so it would see two down at once).
    let two = samples.iter().filter(|&&n| n == 2).count();
    assert!(
        two >= 10,
        "only {two} samples caught a restarting instance: the poller is too slow to judge"
    );
    assert!(
        fewest >= 2,
        "a moment with {fewest} ready instance(s) during the rolling restart"
    );
    let after = client
        .call(
            Target::Service(service.clone()),
            Op::Ping,
            serde_json::Value::Null,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let after = pids(&after);
    for id in IDS {
        assert!(
            after[id] != 0 && after[id] != before[id],
            "{id} is not a new process: {before:?} -> {after:?}"
        );
    }

    // Quiet one instance: its consumer stops reading, its siblings' do not.
    let publishing = Arc::new(AtomicBool::new(true));
    let (p, b) = (publishing.clone(), bus.clone());
    let publisher = tokio::spawn(async move {
        let stream = StreamName::new(WORK).unwrap();
        while p.load(Ordering::SeqCst) {
            let _ = b.publish(&stream, &Envelope::new("work")).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let w1 = Target::instance(SERVICE, "w1").unwrap();
    let reading = |group: &'static str| {
        let bus = bus.clone();
        async move {
            let first = last_delivered(bus.as_ref(), group).await;
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let now = last_delivered(bus.as_ref(), group).await;
                if now.is_some() && now != first {
                    return;
                }
                assert!(Instant::now() < deadline, "{group} never read anything");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    reading("work-w1").await;
    reading("work-w0").await;
    let sent = Instant::now();
    let quiet = client
        .call(
            w1.clone(),
            Op::Quiet,
            serde_json::Value::Null,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let acked = Instant::now();
    assert!(quiet.all_done(), "{quiet:?}");
    let (mut w1_last, mut w1_changed) = (last_delivered(bus.as_ref(), "work-w1").await, acked);
    // w0's position one second after the ack, to show reading stays visible then.
    let mut w0_at_1s = None;
    while acked.elapsed() < Duration::from_millis(2500) {
        let now = last_delivered(bus.as_ref(), "work-w1").await;
        if now != w1_last {
            w1_last = now;
            w1_changed = Instant::now();
        }
        if w0_at_1s.is_none() && acked.elapsed() > Duration::from_secs(1) {
            w0_at_1s = Some(last_delivered(bus.as_ref(), "work-w0").await);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let w0_end = last_delivered(bus.as_ref(), "work-w0").await;
    let stopped_after = w1_changed.saturating_duration_since(acked);
    let fleet_readyz = readyz(fleet.slots[1].port).await;
    let status = registry
        .list(Some(&service))
        .await
        .unwrap()
        .into_iter()
        .find(|i| i.id.as_str() == "w1")
        .map(|i| i.status.to_string());
    println!(
        "quiet acked {:?} after sending; w1's consumer last read {stopped_after:?} after the ack; \
         /readyz {fleet_readyz}, registry status {status:?}",
        acked - sent
    );
    assert!(
        stopped_after < Duration::from_secs(1),
        "w1 kept reading {stopped_after:?} after quiet"
    );
    assert!(
        w0_at_1s.is_some_and(|at_1s| at_1s != w0_end),
        "w0 did not read in the last 1.5 s either: the measure cannot see reading"
    );
    assert_eq!(fleet_readyz, 503, "w1's /readyz while quiet");
    assert_eq!(
        status.as_deref(),
        Some(QUIET_STATUS),
        "w1's registry status while quiet"
    );

    // Resume: it reads again.
    let resumed = client
        .call(
            w1.clone(),
            Op::Resume,
            serde_json::Value::Null,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(resumed.all_done(), "{resumed:?}");
    let resume_acked = Instant::now();
    let parked = last_delivered(bus.as_ref(), "work-w1").await;
    let reads_again = loop {
        if last_delivered(bus.as_ref(), "work-w1").await != parked {
            break resume_acked.elapsed();
        }
        assert!(
            resume_acked.elapsed() < Duration::from_secs(5),
            "w1 did not read again after resume"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let back_readyz = readyz(fleet.slots[1].port).await;
    println!("resume: w1's consumer read again {reads_again:?} after the ack; /readyz {back_readyz}");
    assert!(
        reads_again < Duration::from_secs(1),
        "w1 read again only {reads_again:?} after resume"
    );
    assert_eq!(back_readyz, 200, "w1's /readyz after resume");
    publishing.store(false, Ordering::SeqCst);
    publisher.await.unwrap();

    // A key too short in SG_CONTROL_KEY: boot fails, naming it, nothing registered.
    let bad_log = logs.path().join("bad.log");
    let mut bad = spawn_child("bad", &server.url(), free_port(), "short", &bad_log);
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(status) = bad.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = bad.kill();
            panic!("the child with a short key did not exit");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let bad_log = std::fs::read_to_string(&bad_log).unwrap();
    assert_eq!(code, Some(1), "exit code with a short SG_CONTROL_KEY:\n{bad_log}");
    assert!(bad_log.contains("SG_CONTROL_KEY"), "{bad_log}");

    // SIGTERM: every child exits 0 and leaves the registry.
    let exits = fleet.stop();
    println!("exit codes per slot: {exits:?}; whole test {:?}", began.elapsed());
    for (id, codes) in &exits {
        assert_eq!(codes.as_slice(), [75, 0], "exit codes of {id}");
    }
    let left = registry.list(Some(&service)).await.unwrap();
    assert!(left.is_empty(), "still registered after SIGTERM: {left:?}");
}
