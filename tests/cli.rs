//! The `fleetwire` binary against a private, real redis-server: each
//! command's table and `--json` output, and its exit codes.
#![cfg(all(feature = "cli", feature = "rt-tokio"))]

mod support;

use fleetwire::{
    consumer::{DeadLetters, HandlerError, Runner},
    redis::RedisBackend,
    service::Shutdown,
    ConsumerName, Delivery, Envelope, EventBus, GroupName, Instance, InstanceId, ReadOptions, RegistryStore,
    ServiceName, StartFrom, Status, StreamName,
};
use serde_json::Value;
use std::{
    process::{Command, Output},
    sync::Arc,
    time::{Duration, Instant},
};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn fleetwire(url: &str, args: &[&str]) -> Run {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_fleetwire"))
        .arg("--redis")
        .arg(url)
        .args(args)
        .env_remove("SG_REDIS_URL")
        .env_remove("REDIS_URL")
        .env_remove("SG_NAMESPACE")
        .env_remove("SG_STREAM_MAXLEN")
        .output()
        .expect("run the fleetwire binary");
    Run {
        code: out.status.code().expect("exited"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// Run, expect exit 0, and echo the output (the README shows it).
fn ok(url: &str, args: &[&str]) -> String {
    let r = fleetwire(url, args);
    assert_eq!(r.code, 0, "fleetwire {args:?} failed: {}", r.stderr);
    println!("$ fleetwire {}\n{}", args.join(" "), r.stdout);
    r.stdout
}

fn json(url: &str, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let r = fleetwire(url, &args);
    assert_eq!(r.code, 0, "fleetwire {args:?} failed: {}", r.stderr);
    println!("$ fleetwire {}\n{}", args.join(" "), r.stdout);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {}", r.stdout))
}

fn fails(url: &str, args: &[&str], code: i32) -> String {
    let r = fleetwire(url, args);
    assert_eq!(r.code, code, "fleetwire {args:?}: {}{}", r.stdout, r.stderr);
    r.stderr
}

/// The row of `table` whose first cell is `first`, split into cells.
fn row<'a>(table: &'a str, first: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&first))
        .unwrap_or_else(|| panic!("no row `{first}` in\n{table}"))
}

fn name<T>(r: fleetwire::Result<T>) -> T {
    r.unwrap()
}

async fn register(
    registry: &dyn RegistryStore,
    service: &str,
    id: &str,
    host: &str,
    pid: u32,
    status: Status,
) {
    let mut i = Instance::new(name(ServiceName::new(service)), name(InstanceId::new(id)), status);
    i.host = Some(host.into());
    i.pid = Some(pid);
    registry.register(&i, Duration::from_secs(60)).await.unwrap();
}

/// Publish `n` entries to `stream` and let a runner whose handler always
/// gives up dead-letter them all.
async fn dead_letter(bus: &Arc<dyn EventBus>, stream: &str, n: usize) {
    let s = name(StreamName::new(stream));
    let runner = Runner::builder(
        bus.clone(),
        s.clone(),
        name(GroupName::new("ledger")),
        name(ConsumerName::new("ledger-1")),
    )
    .block(Duration::from_millis(50))
    .max_deliveries(1)
    .start_from(StartFrom::Beginning)
    .handler(|_d: Delivery| async { Err(HandlerError::dead_letter("card declined")) })
    .build()
    .unwrap();
    for amount in 0..n {
        let env = Envelope::new("payment.created")
            .with_payload(&serde_json::json!({ "amount": 100 + amount }))
            .unwrap();
        bus.publish(&s, &env).await.unwrap();
    }
    let stop = Shutdown::default();
    let task = tokio::spawn({
        let (runner, stop) = (runner.clone(), stop.clone());
        async move { runner.run(stop.wait()).await }
    });
    let dlq = DeadLetters::of(bus.clone(), &s).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while dlq.len().await.unwrap() < n as u64 {
        assert!(Instant::now() < deadline, "never dead-lettered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.trigger();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_against_real_redis() {
    let Some(server) = support::RedisServer::start() else {
        return;
    };
    let url = server.url();
    let backend = RedisBackend::builder().url(url.clone()).build().unwrap();
    let registry = backend.registry();
    register(&registry, "api", "api-1", "web-1", 4101, Status::Running).await;
    register(&registry, "api", "api-2", "web-2", 4102, Status::Running).await;
    register(&registry, "worker", "worker-1", "batch-1", 5200, Status::Starting).await;

    let bus: Arc<dyn EventBus> = Arc::new(backend.bus());
    let orders = name(StreamName::new("orders"));
    let billing = name(GroupName::new("billing"));
    bus.ensure_group(&orders, &billing, StartFrom::Beginning)
        .await
        .unwrap();
    for _ in 0..3 {
        bus.publish(&orders, &Envelope::new("order.placed"))
            .await
            .unwrap();
    }
    let got = bus
        .read(
            &orders,
            &billing,
            &name(ConsumerName::new("billing-1")),
            ReadOptions::count(2),
        )
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    dead_letter(&bus, "payments", 3).await;
    dead_letter(&bus, "refunds", 2).await;

    // members
    let table = ok(&url, &["members"]);
    assert_eq!(
        table
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["SERVICE", "ID", "HOST", "PID", "STATUS", "LAST-SEEN", "TTL"]
    );
    // LAST-SEEN is `850ms ago` (two words), TTL what is left of 60 s.
    let api = row(&table, "api");
    assert_eq!(api[..5], ["api", "api-1", "web-1", "4101", "running"]);
    assert_eq!(api[6], "ago", "{table}");
    assert!(api[5].ends_with("ms") || api[5].ends_with('s'), "{table}");
    let ttl_s: u64 = api[7].trim_end_matches('s').parse().expect("TTL in seconds");
    assert!((30..60).contains(&ttl_s), "{table}");
    assert_eq!(
        row(&table, "worker")[..5],
        ["worker", "worker-1", "batch-1", "5200", "starting"]
    );
    let members = json(&url, &["members"]);
    let members = members.as_array().unwrap();
    assert_eq!(members.len(), 3);
    assert_eq!(members[1]["id"], "api-2");
    assert_eq!(members[1]["host"], "web-2");
    assert_eq!(members[1]["pid"], 4102);
    assert_eq!(members[1]["status"], "running");
    let last_seen = members[1]["last_seen_ms"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        now.abs_diff(last_seen) < 10_000,
        "last seen {last_seen}, now {now}"
    );
    let ttl = members[1]["ttl_ms"].as_u64().unwrap();
    assert!(ttl > 50_000 && ttl <= 60_000, "ttl {ttl}");
    let only = json(&url, &["members", "--service", "worker"]);
    assert_eq!(only.as_array().unwrap().len(), 1);
    assert_eq!(only[0]["service"], "worker");

    // streams
    let table = ok(&url, &["streams"]);
    let orders_row = row(&table, "orders");
    assert_eq!(orders_row[1..3], ["3", "1"]);
    assert_eq!(orders_row[5], "100000");
    assert_eq!(row(&table, "payments:dlq")[1], "3");
    let streams = json(&url, &["streams"]);
    let o = streams
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stream"] == "orders")
        .unwrap();
    assert_eq!((o["length"].as_u64(), o["groups"].as_u64()), (Some(3), Some(1)));
    assert_eq!(o["first_id"], got[0].id.to_string());
    assert!(o["last_id"].as_str().unwrap() > got[1].id.to_string().as_str());
    assert_eq!(o["max_len"], 100_000);
    let named = json(&url, &["streams", "--stream", "orders"]);
    assert_eq!(named.as_array().unwrap().len(), 1);
    fails(&url, &["streams", "--stream", "nope"], 3);

    // groups
    let table = ok(&url, &["groups", "orders"]);
    assert_eq!(
        table
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["GROUP", "CONSUMERS", "PENDING", "LAG", "OLDEST-PENDING-AGE"]
    );
    assert_eq!(row(&table, "billing")[..4], ["billing", "1", "2", "1"]);
    let groups = json(&url, &["groups", "orders"]);
    assert_eq!(groups[0]["group"], "billing");
    assert_eq!(groups[0]["pending"], 2);
    assert_eq!(groups[0]["lag"], 1);
    assert_eq!(groups[0]["oldest_pending_id"], got[0].id.to_string());
    assert!(groups[0]["oldest_pending_age_ms"].as_u64().unwrap() < 60_000);
    let stderr = fails(&url, &["groups", "nope"], 3);
    assert!(stderr.contains("stream `nope` not found"), "{stderr}");

    // status
    let text = ok(&url, &["status"]);
    assert!(text.contains("Services:     2 (3 instance(s))"), "{text}");
    assert!(text.contains("Dead letters: 5"), "{text}");
    assert_eq!(row(&text, "api")[1..4], ["2", "2", "0"]);
    assert_eq!(row(&text, "payments")[1..], ["3", "1", "0", "3"]);
    assert!(!text.contains("payments:dlq"), "{text}");
    let status = json(&url, &["status"]);
    assert_eq!(status["instances"], 3);
    assert_eq!(status["dead_letters"], 5);
    assert_eq!(status["services"][1]["by_status"]["starting"], 1);
    let refunds = status["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stream"] == "refunds")
        .unwrap();
    assert_eq!(refunds["dead_letters"], 2);

    // dlq list / show
    let text = ok(&url, &["dlq", "list", "payments"]);
    assert!(
        text.starts_with("payments:dlq: 3 dead letter(s), showing 3\n"),
        "{text}"
    );
    let listing = json(&url, &["dlq", "list", "payments"]);
    assert_eq!(listing["length"], 3);
    let entries = listing["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0]["stream"], "payments");
    assert_eq!(entries[0]["group"], "ledger");
    assert_eq!(entries[0]["reason"], "card declined");
    assert_eq!(entries[0]["attempts"], 1);
    let first = entries[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(row(&text, &first)[2..4], ["ledger", "1"]);
    assert_eq!(
        json(&url, &["dlq", "list", "payments", "--count", "1"])["entries"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let text = ok(&url, &["dlq", "show", "payments", &first]);
    assert!(text.contains("reason:             card declined"), "{text}");
    assert!(text.contains("payload:            {\"amount\":100}"), "{text}");
    let shown = json(&url, &["dlq", "show", "payments", &first]);
    assert_eq!(shown["id"], first.as_str());
    assert_eq!(shown["envelope"]["kind"], "payment.created");
    assert_eq!(shown["envelope"]["payload"]["amount"], 100);
    let stderr = fails(&url, &["dlq", "show", "payments", "1-0"], 3);
    assert!(
        stderr.contains("no dead letter `1-0` in `payments:dlq`"),
        "{stderr}"
    );

    // dlq redrive / purge by id
    let redriven = json(&url, &["dlq", "redrive", "payments", &first]);
    assert_eq!(redriven["moved"], 1);
    assert_eq!(redriven["failed"].as_array().unwrap().len(), 0);
    let payments = name(StreamName::new("payments"));
    assert_eq!(bus.stream_info(&payments).await.unwrap().length, 4);
    fails(&url, &["dlq", "redrive", "payments", "1-0"], 3);
    fails(&url, &["dlq", "redrive", "payments"], 2);
    let second = json(&url, &["dlq", "list", "payments"])["entries"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(json(&url, &["dlq", "purge", "payments", &second])["purged"], 1);
    fails(&url, &["dlq", "purge", "payments", &second], 3);
    assert_eq!(bus.stream_info(&payments).await.unwrap().length, 4);

    // dlq redrive --all / purge --all
    let text = ok(&url, &["dlq", "redrive", "payments", "--all"]);
    assert!(
        text.contains("redrove 1 dead letter(s) from payments:dlq"),
        "{text}"
    );
    assert_eq!(bus.stream_info(&payments).await.unwrap().length, 5);
    assert_eq!(json(&url, &["dlq", "list", "payments"])["length"], 0);
    assert_eq!(json(&url, &["dlq", "purge", "refunds", "--all"])["purged"], 2);
    assert_eq!(json(&url, &["dlq", "list", "refunds"])["length"], 0);
    let refunds = name(StreamName::new("refunds"));
    assert_eq!(
        bus.stream_info(&refunds).await.unwrap().length,
        2,
        "purge leaves the stream alone"
    );

    // deregister
    let text = ok(&url, &["deregister", "api", "api-2"]);
    assert_eq!(text, "deregistered api/api-2\n");
    assert_eq!(json(&url, &["members"]).as_array().unwrap().len(), 2);
    let stderr = fails(&url, &["deregister", "api", "api-2"], 3);
    assert!(
        stderr.contains("no instance `api-2` of service `api`"),
        "{stderr}"
    );
    let gone = json(&url, &["deregister", "worker", "worker-1"]);
    assert_eq!(gone["deregistered"], true);

    // bad usage
    fails(&url, &["groups", "bad name"], 2);
    fails(&url, &["nonsense"], 2);
}

/// `fleetwire members --watch` as a child whose stdout lines arrive on a channel.
struct Watching {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Watching {
    fn start(url: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fleetwire"))
            .args(["--redis", url, "members", "--watch", "--interval-ms", "100"])
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("run the fleetwire binary");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next line, which must contain every one of `parts`, within 10 s.
    fn expect(&mut self, parts: &[&str]) -> String {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no line with {parts:?}; so far:\n{}", self.seen.join("\n")));
        println!("{line}");
        self.seen.push(line.clone());
        for p in parts {
            assert!(
                line.contains(p),
                "expected {parts:?} in `{line}`; so far:\n{}",
                self.seen.join("\n")
            );
        }
        line
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_watch_prints_one_line_per_event() {
    let Some(mut server) = support::RedisServer::start() else {
        return;
    };
    let url = server.url();
    let backend = RedisBackend::builder()
        .url(url.clone())
        .connect_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let registry = backend.registry();
    register(&registry, "api", "api-1", "web-1", 4101, Status::Starting).await;
    let mut text = Watching::start(&url, &[]);
    let mut json = Watching::start(&url, &["--json"]);
    text.expect(&["snapshot", "1 instance: api/api-1 (starting)"]);
    let first: Value = serde_json::from_str(&json.expect(&["snapshot"])).unwrap();
    assert_eq!(first["instances"][0]["id"], "api-1");

    register(&registry, "api", "api-2", "web-2", 4102, Status::Starting).await;
    text.expect(&["joined", "api/api-2 (starting) host=web-2 pid=4102"]);
    let joined: Value = serde_json::from_str(&json.expect(&["joined"])).unwrap();
    assert_eq!(joined["instance"]["host"], "web-2");
    assert!(joined["instance"]["ttl_ms"].as_u64().unwrap() > 50_000);

    register(&registry, "api", "api-1", "web-1", 4101, Status::Running).await;
    text.expect(&["status_changed", "api/api-1 starting -> running"]);
    let changed: Value = serde_json::from_str(&json.expect(&["status_changed"])).unwrap();
    assert_eq!(
        (changed["from"].as_str(), changed["instance"]["status"].as_str()),
        (Some("starting"), Some("running"))
    );

    registry
        .deregister(&name(ServiceName::new("api")), &name(InstanceId::new("api-2")))
        .await
        .unwrap();
    text.expect(&["left", "api/api-2"]);
    json.expect(&[r#""event":"left""#]);

    let mut short = Instance::new(
        name(ServiceName::new("cron")),
        name(InstanceId::new("cron-1")),
        Status::Running,
    );
    short.host = Some("batch-1".into());
    registry
        .register(&short, Duration::from_millis(800))
        .await
        .unwrap();
    text.expect(&["joined", "cron/cron-1"]);
    text.expect(&["expired", "cron/cron-1"]);
    json.expect(&["joined"]);
    json.expect(&[r#""event":"expired""#]);

    // Redis dies and comes back empty; api-1 registers again, api-3 is new.
    assert!(server.kill9());
    text.expect(&["unavailable", "127.0.0.1"]);
    json.expect(&[r#""event":"unavailable""#]);
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let i1 = Instance::new(
            name(ServiceName::new("api")),
            name(InstanceId::new("api-1")),
            Status::Running,
        );
        let mut i1 = i1;
        (i1.host, i1.pid) = (Some("web-1".into()), Some(4101));
        let mut i3 = Instance::new(
            name(ServiceName::new("api")),
            name(InstanceId::new("api-3")),
            Status::Starting,
        );
        (i3.host, i3.pid) = (Some("web-3".into()), Some(4103));
        let ttl = Duration::from_secs(60);
        match async {
            registry.register(&i1, ttl).await?;
            registry.register(&i3, ttl).await
        }
        .await
        {
            Ok(()) => break,
            Err(e) if Instant::now() > deadline => panic!("Redis took no writes after its restart: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    // The watch lists every 100 ms, so it may see the empty server before
    // the writes land: the resync's diff then says so, and the writes come
    // after it as ordinary events.
    let mut line = text.expect(&["resynced"]);
    while !line.contains("api/api-3") {
        line = text.expect(&["joined"]);
    }
    let resynced: Value = serde_json::from_str(&json.expect(&["resynced"])).unwrap();
    assert!(resynced["changes"].is_array(), "{resynced}");
    drop((text, json));
}

#[test]
fn unreachable_redis_is_one_line_naming_the_url_without_its_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://ops:s3cret@127.0.0.1:{port}");
    for args in [
        &["status"][..],
        &["members", "--json"],
        &["dlq", "list", "payments"],
    ] {
        let started = Instant::now();
        let stderr = fails(&url, args, 1);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{args:?} took {:?}",
            started.elapsed()
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with(&format!(
                "fleetwire: cannot reach Redis at redis://ops:***@127.0.0.1:{port}"
            )),
            "{stderr}"
        );
        assert!(!stderr.contains("s3cret"), "{stderr}");
    }
}

#[test]
fn wrong_password_is_refused_credentials_without_the_password() {
    let Some(server) = support::RedisServer::start_with(&["--requirepass", "right-one"]) else {
        return;
    };
    let url = format!("redis://:wrong-one@127.0.0.1:{}", server.port);
    let stderr = fails(&url, &["members"], 1);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "fleetwire: Redis at redis://:***@127.0.0.1:{} refused the credentials",
            server.port
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("wrong-one"), "{stderr}");
    let ok_url = format!("redis://:right-one@127.0.0.1:{}", server.port);
    assert_eq!(json(&ok_url, &["members"]), serde_json::json!([]));
}

/// Publish one entry to each of `streams` through `url`'s backend.
async fn publish_each(url: &str, streams: &[String]) {
    let bus = RedisBackend::builder().url(url).build().unwrap().bus();
    for s in streams {
        bus.publish(&name(StreamName::new(s.as_str())), &Envelope::new("x"))
            .await
            .unwrap();
    }
}

/// The stream names `fleetwire streams --json` printed.
fn listed_streams(url: &str) -> Vec<String> {
    let v = json(url, &["streams"]);
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s["stream"].as_str().unwrap().to_owned())
        .collect()
}

/// The CLI takes the same URLs as the library: on a Cluster it lists the
/// streams of every primary, on Sentinel those of the current primary; a
/// stream key no fleetwire call could address is skipped, not fatal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_cluster_and_sentinel_urls() {
    let Some(cluster) = support::cluster::Cluster::start() else {
        return;
    };
    let names: Vec<String> = (0..24).map(|i| format!("orders-{i}")).collect();
    publish_each(&cluster.url(), &names).await;
    let holders: std::collections::BTreeSet<usize> =
        names.iter().filter_map(|n| cluster.primary_of(n)).collect();
    assert!(
        holders.len() >= 2,
        "the streams landed on {holders:?}: not spread"
    );
    let bad = "bad stream";
    let owner = &cluster.nodes[cluster.primary_of(bad).expect("an owner")];
    assert!(owner.cmd(&["XADD", bad, "*", "k", "v"]).starts_with('$'));
    let plain = &cluster.nodes[cluster.primary_of("plain").expect("an owner")];
    assert!(plain.cmd(&["SET", "plain", "v"]).starts_with("+OK"));
    let mut want = names.clone();
    want.sort();
    assert_eq!(listed_streams(&cluster.url()), want, "on the Cluster");
    ok(&cluster.url(), &["status"]);
    drop(cluster);

    let Some(set) = support::sentinel::SentinelSet::start() else {
        return;
    };
    publish_each(&set.url(), &names[..3]).await;
    assert_eq!(listed_streams(&set.url()), names[..3].to_vec(), "on Sentinel");
    ok(&set.url(), &["status"]);
}
