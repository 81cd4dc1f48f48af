//! The dashboard in a real browser: a small fleet in memory, its page
//! opened in headless Chromium, the rendered DOM checked and a screenshot
//! saved to `target/dashboard.png` (and `target/dashboard-phone.png`).
//!
//! In CI (`CI` set) a missing `chromium` fails the test; locally it is
//! skipped with a loud message.
#![cfg(all(feature = "http", feature = "memory", feature = "rt-tokio"))]

use async_trait::async_trait;
use fleetwire::{
    health::Health,
    http::{HttpHealthServer, Overview},
    memory::{MemoryBus, MemoryRegistry},
    monitor::FleetMonitor,
    service::{Context, Lifecycle, Service},
    Envelope, EventBus, GroupName, HealthServer, Instance, InstanceId, RegistryStore, Result, ServiceName,
    StartFrom, Status, StreamName,
};
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

struct Idle;

#[async_trait]
impl Service for Idle {
    async fn on_start(&self, _: &Context) -> Result<()> {
        Ok(())
    }
    async fn run(&self, ctx: &Context) -> Result<()> {
        ctx.stopped().await;
        Ok(())
    }
    async fn on_stop(&self, _: &Context) -> Result<()> {
        Ok(())
    }
}

/// `chromium`, or `None` (loudly) when it is missing outside CI.
fn chromium() -> Option<&'static str> {
    for bin in ["chromium", "chromium-browser"] {
        if Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return Some(bin);
        }
    }
    if std::env::var_os("CI").is_some() {
        panic!("chromium is not installed, and CI is set: the dashboard test cannot run");
    }
    eprintln!(
        "\n!!! chromium not found: SKIPPING the dashboard browser test (apt-get install chromium) !!!\n"
    );
    None
}

/// Run headless Chromium on `url` with `args`, killed after 60 s; its stdout.
fn browse(bin: &str, url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().unwrap()
}

fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response");
    (
        head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap(),
        body.to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_renders_the_fleet() {
    let Some(bin) = chromium() else {
        return;
    };
    let registry: Arc<dyn RegistryStore> = Arc::new(MemoryRegistry::new());
    let bus: Arc<dyn EventBus> = Arc::new(MemoryBus::new());
    // Stale after three beats: long enough that a machine busy rendering
    // the page with Chromium still shows the workers as ok.
    let beat = Duration::from_secs(1);
    let monitor = Arc::new(FleetMonitor::new(["api", "worker", "billing"], beat));
    let _monitor_task = monitor.start(bus.clone()).await.unwrap();

    // Streams: orders with a group, five entries not yet read, one dead letter.
    let orders = StreamName::new("sg:stream:orders").unwrap();
    let group = GroupName::new("sg:workers").unwrap();
    bus.ensure_group(&orders, &group, StartFrom::Beginning)
        .await
        .unwrap();
    for n in 0..5u32 {
        bus.publish(&orders, &Envelope::new("order").with_payload(&n).unwrap())
            .await
            .unwrap();
    }
    let dlq = StreamName::new("sg:stream:orders:dlq").unwrap();
    bus.publish(&dlq, &Envelope::new("dead")).await.unwrap();

    // The fleet: three instances under their lifecycles.
    let mut stops = Vec::new();
    let mut tasks = Vec::new();
    for (service, instance) in [("api", "api-1"), ("api", "api-2"), ("worker", "worker-1")] {
        let lifecycle = Lifecycle::builder(service, instance)
            .unwrap()
            .registry(registry.clone())
            .bus(bus.clone())
            .ttl(Duration::from_secs(5))
            .heartbeat_every(beat)
            .health_heartbeat_every(beat)
            .handle_signals(false)
            .build();
        stops.push(lifecycle.shutdown_handle());
        tasks.push(tokio::spawn(async move { lifecycle.run(&Idle).await }));
    }
    // And one hostile entry written by hand: its text must show as text.
    let hostile = "<img src=x onerror=\"document.title='pwned'\">";
    let mut rogue = Instance::new(
        ServiceName::new("intruder").unwrap(),
        InstanceId::new("rogue-1").unwrap(),
        Status::Other(hostile.into()),
    );
    rogue.host = Some(hostile.into());
    registry.register(&rogue, Duration::from_secs(60)).await.unwrap();

    let server = HttpHealthServer::builder()
        .addr(([127, 0, 0, 1], 0).into())
        .dashboard(
            Overview::new()
                .registry(registry.clone())
                .bus(bus.clone())
                .stream(orders.clone())
                .monitor(monitor.clone()),
        )
        .build()
        .unwrap();
    let addr = server.start(Health::default()).await.unwrap().unwrap();

    // Wait until every instance is registered and has heartbeated.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = tokio::task::spawn_blocking(move || http_get(addr, "/api/overview"))
            .await
            .unwrap();
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let instances: Vec<_> = v["services"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["instances"].as_array().unwrap().clone())
            .collect();
        let seen = instances.iter().filter(|i| i["last_seen"].is_number()).count();
        if instances.len() == 4
            && seen >= 2
            && v["workers"][0]["status"] == "ok"
            && v["workers"][1]["status"] == "ok"
        {
            break;
        }
        assert!(Instant::now() < deadline, "the fleet did not come up: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let url = format!("http://{addr}/");
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let shot = target.join("dashboard.png");
    let phone = target.join("dashboard-phone.png");
    let (dom, _, _) = {
        let (u1, u2, u3) = (url.clone(), url.clone(), url.clone());
        let (s1, s2) = (shot.clone(), phone.clone());
        tokio::task::spawn_blocking(move || {
            let dom = browse(bin, &u1, &["--virtual-time-budget=3000", "--dump-dom"]);
            let a = browse(
                bin,
                &u2,
                &[
                    "--virtual-time-budget=3000",
                    "--window-size=1280,900",
                    &format!("--screenshot={}", s1.display()),
                ],
            );
            let b = browse(
                bin,
                &u3,
                &[
                    "--virtual-time-budget=3000",
                    "--window-size=412,915",
                    &format!("--screenshot={}", s2.display()),
                ],
            );
            (dom, a, b)
        })
        .await
        .unwrap()
    };

    for s in &stops {
        s.trigger();
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    server.stop().await.unwrap();

    // The rendered page lists the instances, the worker table and the streams.
    assert!(dom.contains("<tbody id=\"instances\">"), "no table: {dom}");
    let shown = dom
        .lines()
        .filter(|l| l.contains("id=\"instances\"") || l.contains("id=\"updated\""))
        .collect::<Vec<_>>()
        .join("\n");
    eprintln!("rendered:\n{shown}");
    for id in ["api-1", "api-2", "worker-1", "rogue-1"] {
        assert!(dom.contains(&format!("\">{id}</td>")), "{id} not listed: {shown}");
    }
    assert_eq!(dom.matches("<tr class=\"instance\">").count(), 4, "{dom}");
    assert!(
        dom.contains("\">sg:stream:orders</td>"),
        "stream not listed: {dom}"
    );
    assert!(dom.contains("\">sg:workers</td>"), "group not listed: {dom}");
    assert_eq!(dom.matches("<tr class=\"worker\">").count(), 3, "{dom}");
    assert!(dom.contains("\">billing</td>"), "{dom}");
    assert!(dom.contains("badge unknown"), "billing is unknown: {dom}");
    assert!(dom.contains("badge ok"), "{dom}");
    assert!(dom.contains("s ago"), "last seen shown: {dom}");
    assert!(!dom.contains("loading…"), "the page never refreshed: {dom}");
    // The hostile text is shown escaped, never parsed as an element.
    assert!(
        dom.contains("&lt;img src=x"),
        "hostile text not shown as text: {dom}"
    );
    assert!(!dom.contains("<img"), "an element was injected: {dom}");
    assert!(
        dom.contains("<title>fleetwire</title>"),
        "the injected handler ran: {dom}"
    );
    for png in [&shot, &phone] {
        let bytes = std::fs::read(png).unwrap_or_else(|e| panic!("no screenshot {}: {e}", png.display()));
        assert!(bytes.starts_with(b"\x89PNG"), "{} is not a PNG", png.display());
        eprintln!("screenshot: {} ({} bytes)", png.display(), bytes.len());
    }
}

#[tokio::test]
async fn dashboard_routes_are_404_without_an_overview() {
    let server = HttpHealthServer::builder()
        .addr(([127, 0, 0, 1], 0).into())
        .build()
        .unwrap();
    let addr = server.start(Health::default()).await.unwrap().unwrap();
    for path in ["/", "/api/overview"] {
        let (status, _) = tokio::task::spawn_blocking(move || http_get(addr, path))
            .await
            .unwrap();
        assert_eq!(status, 404, "{path}");
    }
    server.stop().await.unwrap();
}
